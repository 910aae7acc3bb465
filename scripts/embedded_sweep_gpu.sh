#!/usr/bin/env bash
# The embedded denoiser's recipe sweep on the device machine, variants side by side on one GPU. Prepare
# with bench/gpu_wheels.sh here, then call the device tool's run with
#     command: bash scripts/embedded_sweep_gpu.sh "lr=3e-3 steps=5000" "transformer_width=192" ...
#     carry: [".whl", "runs/embedded/vae.pt"]      timeout_s: 600
# Each argument is one variant's TrainConfig settings; the committed VAE is reused, the data re-rendered.
set -uo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-/tmp/sweep-out}"
work=/tmp/sweep
mkdir -p "$out" "$work"
python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/diffusers-*.whl
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name --format=csv,noheader
cp runs/embedded/vae.pt "$work/vae.pt"
python3 scripts/embedded_sweep.py prepare --work "$work" --device "${SWEEP_DEVICE:-cuda}" 2>&1 | tail -c 300
index=0
for variant in "$@"; do
    settings=()
    for setting in $variant; do settings+=(--set "$setting"); done
    OMP_NUM_THREADS=1 timeout -s INT "${SWEEP_LIMIT_S:-480}" python3 scripts/embedded_sweep.py train \
        --work "$work" --set "device=${SWEEP_DEVICE:-cuda}" "${settings[@]}" --guidance 2 --guidance 3 --guidance 4.5 --seeds 4 \
        >"$out/variant$index.log" 2>&1 &
    index=$((index + 1))
done
wait
python3 scripts/embedded_sweep.py table --work "$work" | tee "$out/table.txt"
for log in "$out"/variant*.log; do tr '\r' '\n' <"$log" | grep -v '^ *$' | tail -n 2; done
