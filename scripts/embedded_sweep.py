"""Recipe sweep for the embedded model's denoiser: train one TrainConfig variant with the real trainer
and judge it on every held-out caption.

    python scripts/embedded_sweep.py prepare --work runs/sweep            # data, VAE and latents, once
    python scripts/embedded_sweep.py train --work runs/sweep --set lr=3e-3 --set steps=5000
    python scripts/embedded_sweep.py table --work runs/sweep
    python scripts/embedded_sweep.py judge --model models/ecad-shapes --seeds 4   # any pipeline folder

Variants share the prepared data; run several `train` processes side by side on a GPU (`--set
device=cuda`). Each writes `<work>/<variant>/result.json`; `table` prints them all. Accuracy is also
reported per caption layout (one object at a named position; one, two or three in random cells),
because the layouts fail very differently.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from diffusers import PixArtAlphaPipeline
from PIL import Image, ImageDraw

from ecad.embedded.judge import SceneMatchConfig, SceneMatchMetric
from ecad.embedded.scenes import Caption, held_out_captions, training_captions
from ecad.embedded.training import TrainConfig, Trainer, channel_statistics, normalise_latents
from ecad.files import write_json_atomic
from ecad.generation import EncodedPrompts, render
from ecad.models.pipelines import pixart_pipeline

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
WorkOption = Annotated[Path, typer.Option(help="shared data and one folder per variant")]


def _config(settings: list[str]) -> TrainConfig:
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    values: dict[str, object] = {}
    for setting in settings:
        key, _, raw = setting.partition("=")
        if key not in fields:
            raise typer.BadParameter(f"{key!r} is not a TrainConfig field; known: {', '.join(fields)}")
        default = getattr(TrainConfig, key)
        values[key] = raw.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(raw)
    return TrainConfig(**values)  # type: ignore[arg-type]


@app.command()
def prepare(work: WorkOption, device: str = "cpu") -> None:
    """Render the data, train (or load `<work>/vae.pt`) the VAE and encode the latents."""
    trainer = Trainer(TrainConfig(device=device), work)
    pixels, _, _ = trainer.dataset()
    vae, _ = trainer.train_vae(pixels)
    trainer.encode(vae, pixels)


@app.command()
def train(
    work: WorkOption,
    settings: Annotated[list[str], typer.Option("--set", help="TrainConfig field=value")],
    guidance: Annotated[list[float], typer.Option(help="guidance scales to judge")] = [3.0],  # noqa: B006
    seeds: int = 2,
) -> None:
    """Train one variant's denoiser on the prepared data and judge it on all held-out captions."""
    config = _config(settings)
    name = "_".join(settings).replace("=", "-") or "defaults"
    shared = Trainer(config, work)
    pixels, caption_ids, _ = shared.dataset()
    vae, _ = shared.train_vae(pixels)
    mean, std, _ = shared.encode(vae, pixels)
    text_encoder, transformer, seconds = Trainer(config, work / name).train_denoiser((mean, std), caption_ids)
    vae = copy.deepcopy(vae)
    normalise_latents(vae, *channel_statistics(mean, std))
    pipe = pixart_pipeline(transformer, vae, shared.tokenizer, text_encoder).to(config.device)
    result: dict[str, object] = {"variant": name, "train_s": round(seconds, 1), **dataclasses.asdict(config)}
    for scale in guidance:
        asked, _, correct = _judged(pipe, held_out_captions(), seeds, scale, steps=20)
        by_layout = _correct_by_layout(asked, correct)
        result[f"correct_g{scale:g}"] = by_layout.pop("all")
        result[f"layouts_g{scale:g}"] = by_layout
    write_json_atomic(work / name / "result.json", result)
    typer.echo(json.dumps(result))


def _judged(
    pipe: PixArtAlphaPipeline, captions: list[Caption], seeds: int, guidance: float, steps: int
) -> tuple[list[Caption], list[Image.Image], list[float]]:
    """Each caption drawn with seeds 0..seeds-1, and whether the judge reads each image as correct."""
    pipe.set_progress_bar_config(disable=True)
    encoded = EncodedPrompts.encode(pipe, "pixart_alpha", [caption.text for caption in captions])
    indices = [index for index in range(len(captions)) for _ in range(seeds)]
    images = render(pipe, encoded, indices, [i % seeds for i in range(len(indices))], steps, guidance, 64, 64)
    asked = [captions[index] for index in indices]
    judge = SceneMatchMetric(SceneMatchConfig(score="correct"))
    return asked, images, judge.score(images, [caption.text for caption in asked])


def _correct_by_layout(asked: list[Caption], correct: list[float]) -> dict[str, float]:
    shares = {"all": float(np.mean(correct))}
    for layout in sorted({caption.layout for caption in asked}):
        hits = [hit for caption, hit in zip(asked, correct, strict=True) if caption.layout == layout]
        shares[layout] = float(np.mean(hits))
    return shares


def _contact_sheet(
    asked: list[Caption], images: list[Image.Image], correct: list[float], seeds: int
) -> Image.Image:
    """One row per caption, one column per seed; images the judge reads as wrong get a red frame."""
    tile, label = 96, 260
    rows = len(images) // seeds
    sheet = Image.new("RGB", (label + seeds * tile, rows * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (caption, image, hit) in enumerate(zip(asked, images, correct, strict=True)):
        row, column = divmod(index, seeds)
        if column == 0:
            draw.text((6, row * tile + tile // 2 - 6), caption.text, fill="black")
        x, y = label + column * tile, row * tile
        sheet.paste(image.resize((tile - 6, tile - 6), Image.Resampling.NEAREST), (x + 3, y + 3))
        if not hit:
            draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=(220, 0, 0), width=3)
    return sheet


@app.command()
def judge(
    model: Annotated[Path, typer.Option(help="a pipeline folder, e.g. models/ecad-shapes")],
    captions: Annotated[str, typer.Option(help="held-out, or training (every sixth training caption)")] = (
        "held-out"
    ),
    layout: Annotated[str | None, typer.Option(help="only this layout, e.g. '2 anywhere'")] = None,
    seeds: int = 4,
    guidance: float = 3.0,
    steps: int = 20,
    sheet: Annotated[Path | None, typer.Option(help="write a contact sheet of the images here")] = None,
) -> None:
    """Judge a trained pipeline: share of correct images over all and per caption layout."""
    chosen = {"held-out": held_out_captions(), "training": training_captions()[::6]}
    if captions not in chosen:
        raise typer.BadParameter(f"--captions must be one of {', '.join(chosen)}, got {captions!r}")
    selected = [caption for caption in chosen[captions] if layout in (None, caption.layout)]
    if not selected:
        layouts = sorted({caption.layout for caption in chosen[captions]})
        raise typer.BadParameter(f"--layout must be one of {', '.join(layouts)}, got {layout!r}")
    pipe = PixArtAlphaPipeline.from_pretrained(model)
    asked, images, correct = _judged(pipe, selected, seeds, guidance, steps)
    typer.echo(f"{model}: {captions} captions × {seeds} seeds, guidance {guidance:g}, {steps} steps")
    for name, share in _correct_by_layout(asked, correct).items():
        typer.echo(f"  {name:<11} {share:6.1%}")
    if sheet is not None:
        # A palette keeps flat-colour pictures sharp at a fraction of the size.
        _contact_sheet(asked, images, correct, seeds).quantize(colors=256).save(sheet, optimize=True)
        typer.echo(f"wrote {sheet}")


@app.command()
def table(work: WorkOption) -> None:
    """One row per finished variant: its settings that differ from the defaults and its accuracy."""
    defaults = dataclasses.asdict(TrainConfig())
    for path in sorted(work.glob("*/result.json")):
        result = json.loads(path.read_text())
        changed = {key: value for key, value in result.items() if key in defaults and defaults[key] != value}
        scores = {key: f"{value:.1%}" for key, value in result.items() if key.startswith("correct_")}
        for key, layouts in result.items():
            if key.startswith("layouts_"):
                scores[key] = " ".join(f"{layout} {share:.0%}" for layout, share in layouts.items())
        typer.echo(f"{result['train_s']:>8.0f} s  {scores}  {changed}")


if __name__ == "__main__":
    app()
