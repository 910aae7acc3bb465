#!/usr/bin/env bash
# Run here, where PyPI is reachable: fetch into .whl/ (git-ignored) the wheels
# that bench/run_gpu.sh installs on the GPU machine, which has no network. The project itself needs no
# wheel: the working tree travels with every device call and runs from PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
python="${PYTHON:-.venv/bin/python}"
# The device's python3 is CPython 3.12 on x86-64 (/work/.library/device/KINDS.md). Only charset-normalizer
# ships compiled wheels; the rest are pure Python. requests and its family are a fallback for an image
# without them (diffusers' pipelines import requests).
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl diffusers==0.42.1 cache-dit==1.5.3 \
    requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 charset-normalizer==3.5.3
ls -l .whl
du -sh .whl
