#!/usr/bin/env bash
# Installs ecad-server with its pinned dependencies into the Python environment of $PYTHON.
# The Dockerfile runs it with the CUDA torch; tests/test_deploy_docker.py runs it in a fresh venv with
# the CPU torch, so a broken step fails CI without a Docker engine.
#
# usage: install.sh TORCH_SPEC PROJECT_DIR [more pip options, e.g. --dry-run --report FILE]
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 TORCH_SPEC PROJECT_DIR [pip options]" >&2
    exit 2
fi
torch_spec=$1
project=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)

# One resolver run for torch and the project: the exact torch spec wins over the project's loose range,
# so nothing can pull a second torch build, and every other package is held to constraints.txt.
"${PYTHON:-python3}" -m pip install --no-cache-dir --constraint "$here/constraints.txt" "$@" \
    "$torch_spec" "$project"
