# ecad-server on a GPU node. Build: docker build -t ecad-server:0.1.0 .
# Run, config, weights and scaling: README.md, section "Deploy".
#
# PyPI's Linux torch wheel is the CUDA build and carries its own CUDA libraries, so the base only needs
# to pair with the node's driver; nothing is compiled in the image.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

# The CUDA build from PyPI; CI installs the same steps with the CPU build (tests/test_deploy_docker.py).
ARG TORCH_SPEC=torch==2.13.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models/hf \
    ECAD_HOST=0.0.0.0 \
    ECAD_PORT=8000

# The base tag fixes the Ubuntu release and so its python3 (3.12); exact Debian revisions are dropped
# from the archive over time and would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

COPY deploy/docker/install.sh deploy/docker/constraints.txt /tmp/install/
COPY pyproject.toml README.md /tmp/src/
COPY ecad /tmp/src/ecad
COPY server /tmp/src/server
RUN PYTHON=/opt/venv/bin/python /tmp/install/install.sh "$TORCH_SPEC" /tmp/src \
    && rm -rf /tmp/install /tmp/src \
    && ecad --help > /dev/null

# Weights: a volume at /models (local diffusers folders, or a Hugging Face cache under /models/hf).
RUN useradd --create-home --uid 10001 ecad \
    && mkdir -p /models/hf \
    && chown -R ecad /models
WORKDIR /srv/ecad
# The schedule registry; configs mounted at /srv/ecad/config.yaml resolve `schedules/<model>` here.
COPY schedules ./schedules
# Default config and its model (the embedded ecad-shapes, 13 MB, CPU) so the image answers without a
# mount; mount a real config over it.
COPY models/ecad-shapes ./models/ecad-shapes
COPY config.yaml ./config.yaml

# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001
VOLUME ["/models"]
EXPOSE 8000
# Liveness only: /readyz stays 503 while weights load, which is the orchestrator's business, not a crash.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['ECAD_PORT']}/healthz\", timeout=4)"]
# exec form: `ecad serve` is PID 1 and gets SIGTERM directly (it shuts its workers down on it).
ENTRYPOINT ["ecad", "serve"]
CMD ["--config", "/srv/ecad/config.yaml"]
