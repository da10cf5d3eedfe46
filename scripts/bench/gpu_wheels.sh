#!/usr/bin/env bash
# Downloads the pure-Python packages the device check needs and a stock CUDA image lacks (tyro, websockets and their
# dependencies) into .device_wheels/ (ignored by git), for a Python 3.12 x86-64 machine without network access.
# On the device: pip install --no-index --find-links .device_wheels tyro websockets
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform any --implementation cp --dest .device_wheels tyro==1.0.17 websockets==17.4
du -sh .device_wheels
