"""`ecad` command line: the library's commands (the server package adds `serve`)."""

from __future__ import annotations

import json
import shlex
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


def _key_values(items: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        pairs[key] = value
    return pairs


# Switches that are not None by default: left out of the command line when at their default.
_SWITCH_DEFAULTS = {"resume": False, "progress": True}


def _command_line(command: str, flags: dict[str, object]) -> str:
    """The command with the flags given (defaults left out), as a registry's provenance."""
    words = command.split()
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is _SWITCH_DEFAULTS.get(key):
            continue
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            words += [part for item in value for part in (flag, str(item))]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


@app.command("search")
def search(
    config: Annotated[
        Path | None, typer.Option("--config", help="search.yaml; flags override its keys")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="id of a model entry of --models-config [its first]")
    ] = None,
    models_config: Annotated[
        Path | None, typer.Option(help="file with the `models:` list [config.yaml]")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps [the model's]")] = None,
    resolution: Annotated[
        int | None, typer.Option(help="square image side [the model's default size]")
    ] = None,
    guidance: Annotated[float | None, typer.Option(help="guidance scale [the model's]")] = None,
    text_tokens: Annotated[int | None, typer.Option(help="text tokens [the family's]")] = None,
    prompts: Annotated[str | None, typer.Option(help="prompt file or built-in set [imagereward-100]")] = None,
    prompt_limit: Annotated[int | None, typer.Option(help="use only the first N prompts")] = None,
    validation_prompts: Annotated[
        str | None, typer.Option(help="other prompts to re-score the front on; tiers are chosen there")
    ] = None,
    validation_prompt_limit: Annotated[
        int | None, typer.Option(help="use only the first N validation prompts")
    ] = None,
    images_per_prompt: Annotated[int | None, typer.Option(help="seeds 0..K-1 per prompt [2]")] = None,
    population: Annotated[int | None, typer.Option(help="NSGA-II population [24]")] = None,
    generations: Annotated[int | None, typer.Option(help="generations [10]")] = None,
    metric: Annotated[str | None, typer.Option(help="quality metric [fidelity]")] = None,
    metric_option: Annotated[
        list[str] | None, typer.Option(help="metric option KEY=VALUE (repeatable)")
    ] = None,
    cost: Annotated[str | None, typer.Option(help="macs or latency [macs]")] = None,
    out: Annotated[
        Path | None, typer.Option(help="registry folder [the model's, as the server reads it]")
    ] = None,
    state: Annotated[Path | None, typer.Option(help="checkpoint folder [runs/search-<model>]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the search in --state")] = False,
    seed: Annotated[int | None, typer.Option(help="GA random seed [0]")] = None,
    seeding: Annotated[str | None, typer.Option(help="heuristics or random [heuristics]")] = None,
    crossover_points: Annotated[int | None, typer.Option(help="[4]")] = None,
    crossover_prob: Annotated[float | None, typer.Option(help="[0.9]")] = None,
    mutation_prob: Annotated[
        float | None, typer.Option(help="probability an offspring is mutated [0.05]")
    ] = None,
    eliminate_duplicates: Annotated[bool | None, typer.Option(help="[on]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="images per pipeline call [8]")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker")] = None,
    dask: Annotated[str | None, typer.Option(help="scheduler address, or local:N")] = None,
    tier_rule: Annotated[
        list[str] | None, typer.Option(help="max relative quality loss per tier, e.g. best=0.02 (repeatable)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
) -> None:
    """Find a model's Pareto front of schedules (NSGA-II) and write its schedule registry."""
    flags = dict(locals())
    from ecad.config import ConfigError
    from ecad.search import load_search_config, prepare, run_search, write_outputs

    overrides = {
        key: value
        for key, value in flags.items()
        if key not in {"config", "metric_option", "tier_rule", "progress"}
    }
    overrides["resume"] = resume or None
    if metric_option:
        overrides["metric_options"] = _key_values(metric_option, "--metric-option")
    if tier_rule:
        overrides["tier_rule"] = {
            key: float(value) for key, value in _key_values(tier_rule, "--tier-rule").items()
        }
    try:
        settings = load_search_config(config, overrides)
        run = run_search(prepare(settings), progress=progress)
        outcome = write_outputs(run, provenance=_command_line("ecad search", flags))
    except (ConfigError, ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("\ninterrupted; the last finished generation is saved: rerun with --resume", err=True)
        raise typer.Exit(130) from None
    typer.echo((outcome.registry / "summary.md").read_text())
    typer.echo(f"registry written to {outcome.registry}")


@app.command("eval")
def evaluate(
    registry: Annotated[Path, typer.Option(help="registry folder, e.g. schedules/<model>")],
    prompts: Annotated[str, typer.Option(help="held-out prompt file or built-in set")] = "partiprompts",
    model: Annotated[str | None, typer.Option(help="model id in --models-config [the registry's]")] = None,
    models_config: Annotated[Path, typer.Option(help="file with the `models:` list")] = Path("config.yaml"),
    metric: Annotated[list[str] | None, typer.Option(help="metric (repeatable) [fidelity, psnr]")] = None,
    prompt_limit: Annotated[int | None, typer.Option(help="use only the first N prompts")] = 16,
    images_per_prompt: Annotated[int, typer.Option(help="seeds 0..K-1 per prompt")] = 1,
    resolution: Annotated[int | None, typer.Option(help="square side; may differ from the search's")] = None,
    batch_size: Annotated[int, typer.Option(help="images per pipeline call")] = 8,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
    out: Annotated[Path | None, typer.Option(help="report folder [the registry folder]")] = None,
    progress: Annotated[bool, typer.Option(help="show the progress bar")] = True,
) -> None:
    """Re-score every front schedule on held-out prompts, beside no-cache, FORA N=2..5 and fewer steps."""
    from ecad.config import ConfigError
    from ecad.registry import FRONT_FILE, read_front
    from ecad.search.config import SearchConfig, find_model
    from ecad.search.prompts import read_prompts
    from ecad.search.report import eval_setup, evaluate_registry, write_report

    if not (registry / FRONT_FILE).is_file():
        typer.echo(f"error: {registry}: not a registry folder (no {FRONT_FILE})", err=True)
        raise typer.Exit(2)
    try:
        model_id = model or read_front(registry).document.model_id
        entry = find_model(SearchConfig(model=model_id, models_config=models_config))
        metrics = metric or ["fidelity", "psnr"]
        setup = eval_setup(
            entry,
            read_prompts(prompts, prompt_limit),
            images_per_prompt,
            resolution,
            metrics,
            None,
            batch_size,
            threads,
        )
        report = evaluate_registry(registry, setup, metrics, progress)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    markdown, data = write_report(report, out or registry)
    typer.echo(markdown.read_text())
    typer.echo(f"report written to {markdown} and {data}")
