#!/usr/bin/env bash
# Issue 7's GPU benchmark, run on the device machine from the repository root. Prepare with
# bench/gpu_wheels.sh here, then call the device tool's run with
#     command: bash bench/run_gpu.sh        carry: [".whl"]        timeout_s: 600
# Arguments go on to `python -m bench.gpu` (e.g. --only flux_256 --budget-s 200).
set -euo pipefail
export PYTHONUNBUFFERED=1 CACHE_DIT_LOG_LEVEL=warning
out="${OUT:-/tmp/gpu-bench}"
mkdir -p "$out"
wheels=(.whl/diffusers-*.whl .whl/cache_dit-*.whl)
if ! python3 -c "import requests" 2>/dev/null; then
    wheels+=(.whl/requests-*.whl .whl/urllib3-*.whl .whl/idna-*.whl .whl/certifi-*.whl)
    wheels+=(.whl/charset_normalizer-*.whl)
fi
python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "${wheels[@]}"
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm --format=csv || true
# Fail fast, before any device time goes to the benchmark, if the essentials do not import; cache-dit
# stays optional (its rows say why when it is missing).
python3 -c 'import torch, diffusers, ecad; print("torch", torch.__version__, "diffusers", diffusers.__version__,
    torch.cuda.get_device_name(0))'
# SIGINT leaves time for the benchmark to write what it has before the device call's own limit.
timeout -s INT -k 20 560 python3 -m bench.gpu --out "$out" "$@" 2>&1 | tee "$out/log.txt"
