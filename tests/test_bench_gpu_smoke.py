"""python -m bench.gpu end to end in its quick CPU mode: every row of the benchmark runs on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.gpu.__main__ import DEFAULT_BASELINE, parse_args
from bench.gpu.instruments import CALL_RANGE, FORWARD_RANGE, count_events

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {
    "pixart_alpha_64": ("ours_fast", "ours_faster", "ours_fastest"),
    "flux_64": ("ours_fast", "ours_faster"),
}
# The columns issue 7 asks for.
COLUMNS = (
    "ms_per_image",
    "speedup",
    "mac_ratio",
    "efficiency",
    "peak_memory_bytes",
    "cache_memory_bytes",
    "cache_bound_bytes",
    # Issue 17: what a call launches and syncs, from one profiled call, and the baseline run's row.
    "transformer_forwards",
    "kernel_ops_per_step",
    "cuda_launches_per_step",
    "cuda_launches_per_call",
    "host_syncs_per_call",
    "cuda_syncs_per_call",
    "baseline_ms_per_image",
    "baseline_efficiency",
)
# Rows that run the new cache engine: no host read of a tensor during a call.
ENGINE_ROWS = ("ecad:", "fora_", "compile:ours")
CACHE_DIT_PRESETS = ("slow", "medium", "fast", "ultra")


def run_quick(out: Path, baseline: Path) -> dict[str, Any]:
    only = [arg for key in SECTIONS for arg in ("--only", key)]
    command = [
        sys.executable,
        "-m",
        "bench.gpu",
        "--out",
        str(out),
        "--quick",
        "--device",
        "cpu",
        "--repeats",
        "1",
        "--baseline",
        str(baseline),
    ]
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "CACHE_DIT_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run([*command, *only], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu.json").read_text())


def expected_rows(family_schedules: tuple[str, ...], flux: bool) -> set[str]:
    rows = {"no_cache", "fora_3", "compile:no_cache"}
    rows |= {f"ecad:{name}" for name in family_schedules} | {f"compile:{name}" for name in family_schedules}
    rows |= {f"cache-dit:{preset}" for preset in CACHE_DIT_PRESETS}
    if flux:
        rows |= {"diffusers:fbc", "diffusers:taylorseer", "diffusers:taylorseer_all"}
    return rows


def write_baseline(path: Path) -> Path:
    """An earlier run with one row that matches this run's and one that does not."""
    rows = [
        {"key": "no_cache", "status": "ok", "ms_per_image": 123.4, "efficiency": 1.0},
        {"key": "ecad:not_in_this_run", "status": "ok", "ms_per_image": 1.0, "efficiency": 0.5},
    ]
    environment = {"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.11.0+cu130"}
    sections = [{"key": "pixart_alpha_64", "rows": rows}]
    path.write_text(json.dumps({"environment": environment, "sections": sections}))
    return path


def test_quick_cpu_run_fills_every_row_and_column(tmp_path: Path) -> None:
    report = run_quick(tmp_path, write_baseline(tmp_path / "baseline.json"))
    markdown = (tmp_path / "gpu.md").read_text()
    assert report["environment"]["torch"]
    assert [section["key"] for section in report["sections"]] == list(SECTIONS)
    for section in report["sections"]:
        rows = {row["key"]: row for row in section["rows"]}
        fewer_steps = {key for key in rows if key.startswith("steps:")}
        assert fewer_steps, section["key"]
        assert set(rows) - fewer_steps == expected_rows(SECTIONS[section["key"]], section["family"] == "flux")
        for key, row in rows.items():
            assert set(COLUMNS) <= set(row), key
            assert row["label"] in markdown, key
            if key.startswith("cache-dit:") and row["status"] == "unavailable":
                continue  # cache-dit is an optional dependency
            assert row["status"] == "ok", (key, row["note"])
            assert row["ms_per_image"] > 0 and row["speedup"] > 0, key
            assert row["mac_ratio"] >= 1.0 and row["efficiency"] is not None, key
            if key.startswith(("ecad:", "fora_")):
                assert row["realized_matches_plan"], key
            if key.startswith(("ecad:", "compile:ours")):
                assert 0 < row["cache_memory_bytes"] <= row["cache_bound_bytes"], key
            assert row["transformer_forwards"] == row["steps"] and row["profiled_call_s"] > 0, key
            if not row["compiled"]:
                assert row["kernel_ops_per_step"] > 0, key
            # No CUDA here: launches and CUDA syncs are the GPU run's; host reads are counted anywhere.
            assert row["cuda_launches_per_step"] is row["cuda_syncs_per_call"] is None, key
            assert row["host_syncs_per_call"] is not None, key
            if key.startswith(ENGINE_ROWS):
                assert row["host_syncs_per_call"] == 0, key
        if "diffusers:fbc" in rows:  # its skip decision reads a tensor every step: the count is live
            assert rows["diffusers:fbc"]["host_syncs_per_call"] > 0
    for column in ("kernel ops / step", "CUDA launches / step", "host syncs / call", "CUDA syncs / call"):
        assert column in markdown, column
    assert "baseline ms/image" in markdown and "baseline wall/MAC" in markdown
    assert "baseline.json` (ran on NVIDIA H200, torch 2.11.0+cu130; this run: cpu" in markdown
    baseline_rows = {row["key"]: row for row in report["sections"][0]["rows"]}
    assert baseline_rows["no_cache"]["baseline_ms_per_image"] == 123.4
    assert baseline_rows["no_cache"]["baseline_efficiency"] == 1.0
    assert baseline_rows["fora_3"]["baseline_ms_per_image"] is None
    assert "| no cache | " in markdown and "| 123.4 | 100% |" in markdown


def test_profiled_call_counts_launches_inside_forwards_and_syncs_inside_the_call() -> None:
    """The GPU run's counting, on the event names torch.profiler gives CUDA calls."""
    events = [
        ("cudaLaunchKernel", 0, 1),  # before the call: not counted
        (CALL_RANGE, 10, 100),
        ("cudaMemcpyAsync", 11, 12),  # pageable copy in: syncs by its stream synchronize
        ("cudaStreamSynchronize", 12, 13),
        (FORWARD_RANGE, 20, 40),
        ("cudaLaunchKernel", 21, 22),
        ("cudaLaunchKernelExC", 23, 24),
        ("cuLaunchKernelEx", 25, 26),
        (FORWARD_RANGE, 50, 70),
        ("cudaLaunchKernel_ptsz", 51, 52),
        ("aten::_local_scalar_dense", 60, 61),
        ("cudaStreamSynchronize", 60, 61),
        ("cudaLaunchKernel", 80, 81),  # VAE decode: the call's, no forward's
        ("cudaDeviceSynchronize", 101, 102),  # after the call
    ]
    counts = count_events(events)
    assert (counts.forwards, counts.forward_launches, counts.call_launches) == (2, 4, 5)
    assert (counts.host_reads, counts.cuda_syncs) == (1, 2)


def test_baseline_default_and_off(tmp_path: Path) -> None:
    default = parse_args(["--out", str(tmp_path)]).baseline
    assert default == (DEFAULT_BASELINE if DEFAULT_BASELINE.is_file() else None)
    assert parse_args(["--out", str(tmp_path), "--baseline", "none"]).baseline is None
