"""GPU benchmark (issue 7): ECAD schedules next to diffusers' and cache-dit's caches, on one GPU.

Real-size PixArt-α (28 × 1152, fp16) and FLUX.1-dev (19 + 38 blocks, width 3072, bf16) with random weights
(speed does not depend on weights), called through their diffusers pipelines from random text embeddings of
the right shape, VAE decode included: the paper's latency protocol (ecad.md §6). All rows of a section run
in one process on one model, so every speed-up compares like with like.

    python -m bench.gpu --out DIR                         # one H100/H200, about 7 minutes
    python -m bench.gpu --out DIR --quick --device cpu    # tiny models, every row, for CI

Writes DIR/gpu.md and DIR/gpu.json, rewritten after every row so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.gpu.report import (
    Report,
    SectionReport,
    attach_baseline,
    baseline_note,
    environment,
    markdown_table,
    read_baseline,
)
from bench.gpu.runner import MIN_REPEATS, Run, run_section
from bench.gpu.workloads import full_sections, quick_sections, section_dtype, text_tokens

DEFAULT_BASELINE = Path(__file__).resolve().parents[2] / "docs" / "gpu-results" / "2026-11-26-h200.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.md and gpu.json")
    parser.add_argument("--quick", action="store_true", help="tiny models at 64²/128², every row, seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, help="time for all sections (default 420; quick 600)")
    parser.add_argument("--repeats", type=int, help="timed runs per row after one warm-up (default 3)")
    parser.add_argument("--batch", type=int, help="images per call in every section (default: auto)")
    parser.add_argument("--only", action="append", help="run only these sections, e.g. flux_256")
    parser.add_argument(
        "--baseline",
        help="an earlier run's gpu.json whose rows are shown beside this run's ('none': no baseline; "
        "default: the old engine's H200 run in docs/gpu-results, where it exists)",
    )
    parser.add_argument(
        "--compile-backend", help="torch.compile backend (default inductor; eager for --quick on CPU)"
    )
    args = parser.parse_args(argv)
    if args.baseline is None:
        args.baseline = DEFAULT_BASELINE if DEFAULT_BASELINE.is_file() else None
    elif args.baseline.lower() == "none":
        args.baseline = None
    else:
        args.baseline = Path(args.baseline)
    if args.baseline is not None and not args.baseline.is_file():
        parser.error(f"--baseline {args.baseline}: no such file")
    args.budget_s = args.budget_s or (600.0 if args.quick else 420.0)
    args.repeats = max(1, args.repeats or (MIN_REPEATS if args.quick else 3))
    # Inductor needs minutes of C++ compilation on a CPU; eager still exercises Dynamo's tracing.
    if args.compile_backend is None and args.quick and args.device == "cpu":
        args.compile_backend = "eager"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    sections = quick_sections() if args.quick else full_sections()
    if args.only:
        unknown = set(args.only) - {s.key for s in sections}
        if unknown:
            raise SystemExit(
                f"unknown section(s) {sorted(unknown)}; this mode has {[s.key for s in sections]}"
            )
        sections = [s for s in sections if s.key in args.only]
    report = Report(environment=environment(device), settings={k: str(v) for k, v in vars(args).items()})
    baseline = read_baseline(args.baseline) if args.baseline is not None else None
    if baseline is not None:
        report.settings["baseline_ran_on"] = baseline_note(baseline, report.environment)
    run = Run(args, device, report)
    print(json.dumps(report.environment, indent=2), flush=True)
    deadline = time.perf_counter() + args.budget_s
    for index, section in enumerate(sections):
        weights = [s.weight for s in sections[index:]]
        budget = max(0.0, deadline - time.perf_counter()) * section.weight / sum(weights)
        entry = SectionReport(
            key=section.key,
            model=f"{section.family.label}{' (tiny)' if section.tiny else ''}",
            family=section.family.key,
            resolution=section.resolution,
            dtype=str(section_dtype(section, device)).removeprefix("torch."),
            tiny=section.tiny,
            steps=section.steps,
            text_tokens=text_tokens(section),
            paper_batch=section.paper_batch,
        )
        report.sections.append(entry)
        print(f"== {section.key}: budget {budget:.0f} s", flush=True)
        run_section(run, section, entry, budget)
        attach_baseline(entry, baseline)
        print("\n".join(markdown_table(entry)), flush=True)
    run.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
