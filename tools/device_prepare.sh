#!/usr/bin/env bash
# Run HERE (a machine with pip access), once per session, before using a lent
# GPU through the `device` tool. It fills two git-ignored folders that the
# device call carries (carry=[".whl", ".data"]; .gitignore lists both):
#   .whl/   wheels for what the GPU image lacks (it has jax, flax, optax,
#           orbax, numpy, absl, etils, protobuf, pyarrow, matplotlib...),
#           built for its Python 3.12 / x86-64;
#   .data/  the local CIFAR-10 JPEG copy (../shared does not travel).
# The tree that travels must stay under 64 MiB: the sizes are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .data/tfds
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 \
  --platform manylinux1_x86_64 --platform any"
# Pinned to what the test suite runs here; pure-Python ones need no platform.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp $PLATFORMS -d .whl \
  grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 tensorflow-datasets==4.9.10 \
  ml_collections==1.1.0 tensorboardX==2.6.5 immutabledict==4.3.1 portpicker==1.6.0 \
  simple-parsing==0.1.9 docstring_parser==0.18.0 tensorflow-metadata==1.21.0 \
  termcolor==3.3.0 toml==0.10.2 googleapis-common-protos==1.76.0 simplejpeg==1.9.0
# promise (a TFDS requirement) is published as source only: build its wheel.
python3 -m pip wheel -q --no-deps -w .whl promise==2.3
rm -rf .data/tfds/cifar10_jpeg && cp -r ../shared/data/tfds/cifar10_jpeg .data/tfds/
du -sh .whl .data
echo "repo without ignored files: $(git ls-files -z | du -ch --files0-from=- | tail -1)"
