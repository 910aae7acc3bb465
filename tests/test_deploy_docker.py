"""The Dockerfile without a Docker engine: hadolint, the image's contract, and its install script run
in a fresh virtual environment with the CPU torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
INSTALL = ROOT / "deploy" / "docker" / "install.sh"
CONSTRAINTS = ROOT / "deploy" / "docker" / "constraints.txt"
# The CPU build: the only torch that may be installed on this machine (see the Makefile).
CPU_TORCH = "torch==2.13.0"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in lines]


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    # The linter really lints: an unpinned base and a root `cd` are rejected.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install -y curl\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest`


def test_image_contract() -> None:
    steps = instructions()
    base = next(args for name, args in steps if name == "FROM")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+", base), base
    users = [args for name, args in steps if name == "USER"]
    assert users, "the image must not run as root"
    assert users[-1] not in ("root", "0")
    healthcheck = next(args for name, args in steps if name == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert json.loads(next(args for name, args in steps if name == "ENTRYPOINT")) == ["ecad", "serve"]
    assert any(name == "COPY" and args.split()[0] == "schedules" for name, args in steps)
    env = " ".join(args for name, args in steps if name == "ENV")
    assert "HF_HOME=/models/" in env
    assert "ECAD_HOST=0.0.0.0" in env
    # The image installs through the script that the test below runs.
    assert any(name == "COPY" and args.startswith("deploy/docker/install.sh ") for name, args in steps)
    assert any(name == "RUN" and 'install.sh "$TORCH_SPEC"' in args for name, args in steps)


@pytest.mark.timeout(120)
def test_install_script_resolves_in_a_clean_venv(tmp_path: Path) -> None:
    """The image's install step, in a fresh venv without system site-packages, with the CPU torch.

    `--dry-run --report`: pip resolves everything the image would install (the project built from this
    checkout, torch from its spec, every other package from constraints.txt) but installs nothing, so
    this takes ~40 s instead of minutes of unpacking torch; a conflict, a missing pin or a version that
    does not exist fails here as it would in `docker build`.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    report = tmp_path / "report.json"
    result = subprocess.run(
        [str(INSTALL), CPU_TORCH, str(ROOT), "--dry-run", "--quiet", "--report", str(report)],
        env={**os.environ, "PYTHON": str(venv / "bin" / "python")},
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    resolved = {
        canonicalize_name(item["metadata"]["name"]): (
            item["metadata"]["version"],
            item["download_info"]["url"],
        )
        for item in json.loads(report.read_text())["install"]
    }
    torch_version, torch_url = resolved.pop("torch")
    assert torch_version == "2.13.0+cpu"
    assert torch_url.startswith("file://"), torch_url  # the file on disk, no multi-GB download
    assert not [name for name in resolved if name.startswith("nvidia-") or name == "triton"]
    assert resolved.pop("ecad-server")[1] == ROOT.as_uri()
    lines = [line for line in CONSTRAINTS.read_text().splitlines() if line and not line.startswith("#")]
    pins = {canonicalize_name(req.name): str(req.specifier) for req in map(Requirement, lines)}
    unpinned = {name: version for name, (version, _) in resolved.items() if pins.get(name) != f"=={version}"}
    assert not unpinned, f"resolved outside constraints.txt: {unpinned}"
