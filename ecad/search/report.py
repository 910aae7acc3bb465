"""`ecad eval`: re-score a registry's front on held-out prompts against no-cache, FORA and fewer steps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ecad.config import ModelConfig
from ecad.files import write_json_atomic, write_text_atomic
from ecad.metrics import get_metric, summary_score
from ecad.registry import RegistryError, read_front
from ecad.schedule import Schedule, fora, no_cache
from ecad.search.evaluator import CandidateEvaluator, EvaluationSetup


@dataclass(frozen=True)
class ReportRow:
    name: str
    kind: str  # "no_cache", "front", "fora", "fewer_steps"
    tier: str | None
    steps: int
    tmacs: float
    macs_ratio: float
    latency_ms: float
    speedup: float
    scores: dict[str, float]


@dataclass(frozen=True)
class EvalReport:
    model: str
    prompts: int
    images_per_prompt: int
    resolution: tuple[int, int]
    metrics: list[str]
    rows: list[ReportRow]


def front_schedules(registry: Path, family: str) -> list[tuple[Schedule, str | None]]:
    """The registry's schedules with the tier each serves (by the written tiers), in front order."""
    front = read_front(registry)
    if front.document.family != family:
        raise RegistryError(f"{front.path}: family is {front.document.family!r}, the model is {family!r}")
    tier_of = {file: tier for tier, file in front.document.tiers.items()}
    return [(schedule, tier_of.get(file)) for file, schedule in front.schedules.items()]


def evaluate_registry(
    registry: Path, setup: EvaluationSetup, metrics: list[str], progress: bool = True
) -> EvalReport:
    evaluator = CandidateEvaluator(setup)
    scorers = {name: get_metric(name) for name in metrics}
    steps, architecture = setup.steps, evaluator.architecture
    references, reference_ms = evaluator.generate(None)

    no_cache_tmacs = setup.tmacs(no_cache(architecture, steps))

    def row(name: str, kind: str, tier: str | None, schedule: Schedule | None, run_steps: int) -> ReportRow:
        images, latency = (
            (references, reference_ms) if kind == "no_cache" else evaluator.generate(schedule, run_steps)
        )
        tmacs = setup.tmacs(schedule) if schedule is not None else no_cache_tmacs * run_steps / steps
        scores = {
            metric: round(summary_score(scorer, images, evaluator.job_prompts, references), 6)
            for metric, scorer in scorers.items()
        }
        ratio, speedup = no_cache_tmacs / tmacs, reference_ms / latency
        return ReportRow(name, kind, tier, run_steps, tmacs, ratio, latency, speedup, scores)

    front = front_schedules(registry, setup.model.family)
    plan: list[tuple[str, str, str | None, Schedule | None, int]] = [
        ("no_cache", "no_cache", "exact", None, steps)
    ]
    plan += [(schedule.name, "front", tier, schedule, steps) for schedule, tier in front]
    plan += [(f"fora_every_{n}", "fora", None, fora(architecture, steps, n), steps) for n in range(2, 6)]
    # No-cache at the step count that matches each front point's MACs.
    fewer = {max(1, round(steps * setup.tmacs(schedule) / no_cache_tmacs)) for schedule, _ in front} - {steps}
    plan += [(f"no_cache_{count}_steps", "fewer_steps", None, None, count) for count in sorted(fewer)]
    rows = [row(*entry) for entry in tqdm(plan, desc="eval", unit="schedule", disable=not progress)]
    size = (setup.height, setup.width)
    return EvalReport(setup.model.id, len(setup.prompts), len(setup.seeds), size, metrics, rows)


def fora_at_equal_macs(report: EvalReport, metric: str, tmacs: float) -> float | None:
    """FORA's quality interpolated at `tmacs` along N=2..5 (None outside that range)."""
    fora_rows = sorted((r for r in report.rows if r.kind == "fora"), key=lambda r: r.tmacs)
    xs = [r.tmacs for r in fora_rows]
    if not fora_rows or not xs[0] <= tmacs <= xs[-1]:
        return None
    return float(np.interp(tmacs, xs, [r.scores[metric] for r in fora_rows]))


def render_markdown(report: EvalReport) -> str:
    primary = report.metrics[0]
    header = " | ".join(report.metrics)
    lines = [
        f"# Evaluation: {report.model}",
        "",
        f"{report.prompts} held-out prompts × {report.images_per_prompt} seeds at "
        f"{report.resolution[1]}x{report.resolution[0]}. Fidelity metrics compare with the no-cache image of "
        f"the same seed. Latency: measured on this machine, ms per image. "
        f"Δ FORA: {primary} minus FORA's at equal MACs (interpolated between N=2..5).",
        "",
        f"| schedule | kind | tier | steps | TMACs | MAC ratio | ms/img | speed-up | {header} | Δ FORA |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(report.metrics) + "---|",
    ]
    for r in report.rows:
        scores = " | ".join(f"{r.scores[m]:.6g}" for m in report.metrics)
        fora_value = fora_at_equal_macs(report, primary, r.tmacs) if r.kind == "front" else None
        delta = f"{r.scores[primary] - fora_value:+.3g}" if fora_value is not None else ""
        lines.append(
            f"| {r.name} | {r.kind} | {r.tier or ''} | {r.steps} | {r.tmacs:.4g} | {r.macs_ratio:.2f}× | "
            f"{r.latency_ms:.1f} | {r.speedup:.2f}× | {scores} | {delta} |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: EvalReport, out: Path) -> tuple[Path, Path]:
    markdown = write_text_atomic(out / "eval.md", render_markdown(report))
    data = asdict(report)
    data["resolution"] = list(report.resolution)
    for row in data["rows"]:  # JSON has no infinity: PSNR of an identical image is reported as null
        row["scores"] = {k: v if math.isfinite(v) else None for k, v in row["scores"].items()}
    return markdown, write_json_atomic(out / "eval.json", data)


def eval_setup(
    model: ModelConfig,
    prompts: list[str],
    images_per_prompt: int,
    resolution: int | None,
    metrics: list[str],
    steps: int | None,
    batch_size: int,
    threads: int | None,
) -> EvaluationSetup:
    width, height = model.native_size
    if resolution is not None:
        width = height = resolution
    return EvaluationSetup(
        model=model,
        prompts=tuple(prompts),
        seeds=tuple(range(images_per_prompt)),
        steps=steps or model.steps,
        guidance=model.guidance_scale,
        height=height,
        width=width,
        text_tokens=None,
        metric=metrics[0],
        batch_size=batch_size,
        measure_latency=True,
        threads=threads,
    )
