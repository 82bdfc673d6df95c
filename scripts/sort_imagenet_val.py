"""Sorts ImageNet's flat validation folder into one folder per class (wnid).

    python scripts/sort_imagenet_val.py VAL_DIR LABELS [--dry_run]

Moves VAL_DIR/ILSVRC2012_val_00000001.JPEG to
VAL_DIR/n01751748/ILSVRC2012_val_00000001.JPEG, and so on, which is the
layout a folder dataset reads (docs/own_data.md). LABELS maps the validation
files to their wnids, in one of three formats:
- Kaggle's LOC_val_solution.csv: a header `ImageId,PredictionString`, then
  `ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...` (the first word
  of PredictionString is the wnid);
- a text file of `FILENAME WNID` lines (`ILSVRC2012_val_00000001.JPEG n01751748`);
- a text file of one wnid per line, for the validation files in sorted name
  order, such as TFDS's imagenet2012/validation_labels.txt (then VAL_DIR
  must hold all the files it lists).
File names are matched without their extension. Nothing is moved unless
every image in VAL_DIR has a label. Standard library only.
"""

import argparse
import csv
import os
import re
import sys

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
WNID = re.compile(r'^n\d{8}$')


def _stem(name: str) -> str:
  return os.path.splitext(os.path.basename(name))[0]


def read_labels(path: str, names: list[str]) -> dict[str, str]:
  """{file stem: wnid} from a labels file.

  Args:
    path: the labels file (any of the three formats of the module doc).
    names: the image files to sort, for the one-wnid-per-line format.

  Returns:
    The wnid of each labelled file, keyed by its name without extension.
  """
  with open(path, newline='') as f:
    lines = [line.strip() for line in f if line.strip()]
  if not lines:
    raise ValueError(f'{path} is empty')
  if lines[0].replace(' ', '').startswith('ImageId,PredictionString'):  # Kaggle's CSV.
    pairs = [
      (row['ImageId'], (row['PredictionString'] or '').split()[:1]) for row in csv.DictReader(lines)
    ]
    pairs = [(image_id, words[0] if words else '') for image_id, words in pairs]
    first_line = 2
  elif len(lines[0].split()) == 1:  # One wnid per line, in sorted file order.
    if len(lines) != len(names):
      raise ValueError(
        f'{path} lists {len(lines)} wnids, one per validation file in sorted order, but the '
        f'folder holds {len(names)} images: it needs all of them (or use a FILENAME WNID file)'
      )
    pairs = list(zip(sorted(names), lines))
    first_line = 1
  else:
    pairs = [(line.split() + [''])[:2] for line in lines]
    first_line = 1
  labels = {}
  for number, (name, wnid) in enumerate(pairs, first_line):
    if not WNID.match(wnid):
      raise ValueError(f'{path}, entry {number}: {wnid!r} is not a wnid (n + 8 digits)')
    labels[_stem(name)] = wnid
  return labels


def plan(val_dir: str, labels_path: str) -> list[tuple[str, str]]:
  """The moves that sort val_dir: (file name, wnid) of each loose image file."""
  names = sorted(
    entry.name
    for entry in os.scandir(val_dir)
    if entry.is_file()
    and not entry.name.startswith('.')
    and entry.name.lower().endswith(IMAGE_SUFFIXES)
  )
  if not names:
    return []
  labels = read_labels(labels_path, names)
  unlabelled = [name for name in names if _stem(name) not in labels]
  if unlabelled:
    raise ValueError(
      f'{len(unlabelled)} of the {len(names)} images in {val_dir} have no label in '
      f'{labels_path} (e.g. {unlabelled[0]}); nothing was moved'
    )
  return [(name, labels[_stem(name)]) for name in names]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('val_dir', help='the flat validation folder (ILSVRC2012_val_*.JPEG)')
  parser.add_argument(
    'labels', help='LOC_val_solution.csv, or a FILENAME WNID / wnid-per-line file'
  )
  parser.add_argument('--dry_run', action='store_true', help='print what would move; move nothing')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.val_dir):
    sys.exit(f'error: {args.val_dir} is not a folder')
  try:
    moves = plan(args.val_dir, args.labels)
  except (OSError, ValueError) as e:
    sys.exit(f'error: {e}')
  if not moves:
    print(f'{args.val_dir} holds no loose image files: nothing to sort')
    return
  classes = sorted({wnid for _, wnid in moves})
  verb = 'would move' if args.dry_run else 'moving'
  print(f'{verb} {len(moves)} images of {args.val_dir} into {len(classes)} class folders')
  for name, wnid in moves[:3]:
    print(f'  {name} -> {wnid}/{name}')
  if args.dry_run:
    return
  for wnid in classes:
    os.makedirs(os.path.join(args.val_dir, wnid), exist_ok=True)
  for name, wnid in moves:
    target = os.path.join(args.val_dir, wnid, name)
    if os.path.exists(target):
      sys.exit(f'error: {target} already exists; remove one of the two copies and rerun')
    os.replace(os.path.join(args.val_dir, name), target)
  print('done')


if __name__ == '__main__':
  main()
