#!/usr/bin/env bash
# Gathers what a GPU host without internet needs to run this project, into
# the git-ignored folder .bundle/ of this checkout:
#   .bundle/wheels/  wheels of the packages a CUDA JAX image usually lacks
#                    (TFDS, Grain, array_record, ml_collections, tensorboardX,
#                    simplejpeg, tqdm and their small dependencies), for CPython
#                    $PYTHON_VERSION (default 3.12) on x86-64 Linux;
#   .bundle/tfds/    the named TFDS datasets, copied from DATA_DIR.
# Run it on a machine with pip access, then copy the checkout (with .bundle/)
# to the GPU host and run scripts/gpu_reproduce.sh there.
#
#   bash scripts/offline_bundle.sh DATA_DIR [DATASET ...]   # default: cifar10_jpeg
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/offline_bundle.sh DATA_DIR [DATASET ...]" >&2
  exit 2
fi
DATA_DIR=$1
shift
DATASETS=("${@:-cifar10_jpeg}")
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
mkdir -p .bundle/wheels .bundle/tfds
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 \
  --platform manylinux1_x86_64 --platform any"
# Pinned to the versions the test suite runs with; pure-Python ones fit any platform.
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
  --implementation cp $PLATFORMS -d .bundle/wheels \
  grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 tensorflow-datasets==4.9.10 \
  ml_collections==1.1.0 tensorboardX==2.6.5 immutabledict==4.3.1 portpicker==1.6.0 \
  simple-parsing==0.1.9 docstring_parser==0.18.0 tensorflow-metadata==1.21.0 \
  termcolor==3.3.0 toml==0.10.2 googleapis-common-protos==1.76.0 simplejpeg==1.9.0 tqdm==4.70.1
# promise (a TFDS requirement) is published as source only: build its wheel.
python3 -m pip wheel -q --no-deps -w .bundle/wheels promise==2.3
for name in "${DATASETS[@]}"; do
  if [ ! -d "$DATA_DIR/$name" ]; then
    echo "error: $DATA_DIR/$name does not exist; give the TFDS data directory that holds it" >&2
    exit 1
  fi
  rm -rf ".bundle/tfds/$name" && cp -r "$DATA_DIR/$name" .bundle/tfds/
done
du -sh .bundle/wheels .bundle/tfds
echo "tracked files: $(git ls-files -z | du -ch --files0-from=- | tail -1)"
