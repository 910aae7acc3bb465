"""`ecad` command line: the library's commands (the server package adds `serve`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ecad.costs import PAPER_BATCH, PAPER_RESOLUTION, schedule_cost
from ecad.schedule import ScheduleFileError, load_schedule

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Evolutionary caching for diffusion transformers."
)
schedule_app = typer.Typer(no_args_is_help=True, help="Inspect schedule files.")
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("info")
def schedule_info(
    path: Annotated[Path, typer.Argument(help="An ECAD schedule JSON file.")],
    resolution: Annotated[int, typer.Option(help="Image side in pixels (square).")] = PAPER_RESOLUTION,
    text_tokens: Annotated[
        int | None, typer.Option(help="Text tokens; default: the family's (α 120, Σ 300, FLUX 512).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Batch rows (the paper counts 2: text + null).")] = PAPER_BATCH,
    family: Annotated[str | None, typer.Option(help="Override the family recorded in the file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """MACs, recompute fraction and cache memory of a schedule, derived from the architecture."""
    try:
        schedule = load_schedule(path, family=family)
    except ScheduleFileError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if resolution % 16 or resolution <= 0:
        typer.echo(f"error: --resolution must be a positive multiple of 16, got {resolution}", err=True)
        raise typer.Exit(2)
    cost = schedule_cost(schedule, height=resolution, text_tokens=text_tokens, batch=batch)
    if as_json:
        typer.echo(json.dumps(cost.as_dict(), indent=2))
        return
    rows = [
        ("schedule", f"{cost.name} ({cost.family})"),
        ("shape", f"{cost.steps} steps × {cost.blocks} blocks × {cost.components_per_block} components"),
        ("workload", f"{resolution}², {cost.text_tokens} text tokens, batch {cost.batch}"),
        ("recompute fraction", f"{cost.recompute_fraction:.1%}"),
        (
            "TMACs scheduled",
            f"{cost.tmacs:.3f}  (no cache {cost.tmacs_no_cache:.3f}, ratio {cost.macs_ratio:.2f}×)",
        ),
        ("TMACs executed", f"{cost.tmacs_executed:.3f}  (after dead-work elimination)"),
        (
            "cache memory",
            f"peak {cost.cache_peak_bytes / 2**20:.1f} MiB live (16-bit), all slots "
            f"{cost.cache_all_slots_bytes / 2**20:.1f} MiB",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        typer.echo(f"{label:<{width}}  {value}")
