"""The benchmark's results: rows and sections as dataclasses, the machine they ran on, and the
gpu.md / gpu.json files written from them."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch


@dataclass
class Row:
    key: str
    label: str
    group: str
    steps: int
    compiled: bool
    status: str = "pending"  # ok | skipped | failed | unavailable
    note: str = ""
    repeats: int = 0
    ms_per_image: float | None = None
    runs_ms_per_image: list[float] = field(default_factory=list)
    decode_ms_per_image: float | None = None
    first_run_s: float | None = None
    wall_s: float | None = None
    speedup: float | None = None
    speedup_vs_eager_no_cache: float | None = None
    mac_ratio: float | None = None
    mac_ratio_realized: float | None = None
    efficiency: float | None = None
    peak_memory_bytes: int | None = None
    cache_memory_bytes: int | None = None
    cache_memory_kind: str | None = None
    cache_bound_bytes: int | None = None
    paper_speedup: float | None = None
    graphs_compiled: int | None = None
    graphs_compiled_while_timed: int | None = None
    realized_consistent: bool | None = None
    realized_matches_plan: bool | None = None
    # One extra untimed call under torch.profiler, after the timed runs (instruments.profiled_call).
    transformer_forwards: int | None = None
    kernel_ops_per_step: float | None = None
    cuda_launches_per_step: float | None = None
    cuda_launches_per_call: int | None = None
    host_syncs_per_call: int | None = None
    cuda_syncs_per_call: int | None = None
    profiled_call_s: float | None = None
    # The same row of an earlier run (`--baseline`), beside this one.
    baseline_ms_per_image: float | None = None
    baseline_efficiency: float | None = None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


@dataclass
class SectionReport:
    key: str
    model: str
    family: str
    resolution: int
    dtype: str
    tiny: bool
    steps: int
    text_tokens: int
    paper_batch: int
    batch: int | None = None
    batch_limit: str = ""
    repeats: int | None = None
    budget_s: float = 0.0
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


@dataclass
class Report:
    environment: dict[str, Any]
    settings: dict[str, Any]
    sections: list[SectionReport] = field(default_factory=list)


def gib(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def number(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def cache_cell(row: Row) -> str:
    if row.cache_memory_bytes is None:
        return "–"
    if row.cache_bound_bytes is not None:
        return f"{gib(row.cache_memory_bytes)} / {gib(row.cache_bound_bytes)}"
    return f"{gib(row.cache_memory_bytes)} ({row.cache_memory_kind})"


def markdown_table(section: SectionReport) -> list[str]:
    batch = f"batch {section.batch}" if section.batch else "batch –"
    lines = [
        f"### {section.model}, {section.dtype}, {section.resolution}², {section.steps} steps, {batch} "
        f"(paper: {section.paper_batch}{'; ' + section.batch_limit if section.batch_limit else ''})",
        "",
        *[f"- {note}" for note in section.notes],
        "",
        "| method | ms/image | speed-up | MAC ratio | wall/MAC | kernel ops / step | CUDA launches / step "
        "| host syncs / call | CUDA syncs / call | baseline ms/image | baseline wall/MAC | peak GPU mem "
        "| cache mem (measured / bound) | paper A6000 | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in section.rows:
        note = row.note if row.status == "ok" else f"**{row.status}**: {row.note}"
        lines.append(
            f"| {row.label} | {number(row.ms_per_image, '.1f')} | {times(row.speedup)} "
            f"| {times(row.mac_ratio)} | {number(row.efficiency, '.0%')} "
            f"| {number(row.kernel_ops_per_step, '.0f')} | {number(row.cuda_launches_per_step, '.0f')} "
            f"| {number(row.host_syncs_per_call, 'd')} | {number(row.cuda_syncs_per_call, 'd')} "
            f"| {number(row.baseline_ms_per_image, '.1f')} | {number(row.baseline_efficiency, '.0%')} "
            f"| {gib(row.peak_memory_bytes)} | {cache_cell(row)} | {times(row.paper_speedup)} "
            f"| {note.replace('|', '/')} |"
        )
    return [*lines, ""]


def markdown(report: Report) -> str:
    env = report.environment
    lines = [
        "## GPU benchmark (issue 7) — results",
        "",
        f"{env.get('gpu', env['device'])} · driver {env.get('driver', '–')} · CUDA {env.get('cuda')} · "
        f"torch {env['torch']} · diffusers {env['diffusers']} · cache-dit {env['cache_dit']} · "
        f"Python {env['python']}",
        "",
        "Random weights and text embeddings; VAE decode included; ms/image = median of the "
        "timed runs after one warm-up, ÷ batch. Speed-ups are against no cache in the same run (compiled "
        "rows: against no cache compiled the same way). MAC ratio: ECAD/FORA from the schedule (paper "
        "convention, ecad.md §5), other rows from the components that really ran. Cache memory: ECAD rows "
        "measured slot bytes / liveness bound; peers: peak-memory growth over no cache.",
        "",
    ]
    baseline = report.settings.get("baseline")
    if baseline and baseline != "None":
        ran_on = report.settings.get("baseline_ran_on", "")
        lines += [f"Baseline columns: the same section and row in `{baseline}`{ran_on}.", ""]
    lines += [
        "Per step = per transformer forward (one a step in every section), from one extra untimed call "
        "under torch.profiler after the timed runs. Kernel ops: the transformer's ATen ops that launch a "
        "kernel (eager rows). CUDA launches: kernel launch calls inside the transformer's forwards. Host "
        "syncs: reads of a tensor on the host (`.item()`) in the whole call; CUDA syncs: every blocking "
        "CUDA call in it (host reads, `nonzero`, copies from pageable memory, synchronizes).",
        "",
    ]
    for section in report.sections:
        lines += markdown_table(section)
    return "\n".join(lines)


@dataclass
class Baseline:
    """An earlier run's gpu.json: its rows by (section key, row key), and what it ran on."""

    rows: dict[tuple[str, str], dict[str, Any]]
    ran_on: str


def read_baseline(path: Path) -> Baseline:
    document = json.loads(path.read_text())
    rows = {(section["key"], row["key"]): row for section in document["sections"] for row in section["rows"]}
    env = document.get("environment", {})
    parts = [env.get("gpu", env.get("device")), env.get("torch") and f"torch {env['torch']}"]
    return Baseline(rows, ", ".join(part for part in parts if part))


def baseline_note(baseline: Baseline, here: dict[str, Any]) -> str:
    """How the baseline's machine compares with this one, for the line that names it."""
    if not baseline.ran_on:
        return ""
    gpu = here.get("gpu", here["device"])
    other = "" if baseline.ran_on.startswith(gpu) else f"; this run: {gpu}, timings not like for like"
    return f" (ran on {baseline.ran_on}{other})"


def attach_baseline(section: SectionReport, baseline: Baseline | None) -> None:
    if baseline is None:
        return
    for row in section.rows:
        earlier = baseline.rows.get((section.key, row.key))
        if earlier is not None and earlier.get("status") == "ok":
            row.baseline_ms_per_image = earlier.get("ms_per_image")
            row.baseline_efficiency = earlier.get("efficiency")


def write_outputs(out: Path, report: Report) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(report))


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def gpu_driver() -> str:
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({type(error).__name__})"


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": package_version("diffusers"),
        "cache_dit": package_version("cache-dit"),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
            "driver": gpu_driver(),
        }
    return info
