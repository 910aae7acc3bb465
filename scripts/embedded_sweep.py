"""Recipe sweep for the embedded model's denoiser: train one TrainConfig variant with the real trainer
and judge it on every held-out caption.

    python scripts/embedded_sweep.py prepare --work runs/sweep            # data, VAE and latents, once
    python scripts/embedded_sweep.py train --work runs/sweep --set lr=3e-3 --set steps=5000
    python scripts/embedded_sweep.py table --work runs/sweep

Variants share the prepared data; run several `train` processes side by side on a GPU (`--set
device=cuda`). Each writes `<work>/<variant>/result.json`; `table` prints them all.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from diffusers import PixArtAlphaPipeline

from ecad.embedded.judge import SceneMatchConfig, SceneMatchMetric
from ecad.embedded.scenes import held_out_captions
from ecad.embedded.training import TrainConfig, Trainer, channel_statistics, normalise_latents
from ecad.files import write_json_atomic
from ecad.pipelines.tiny import pixart_scheduler

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
    pipe = PixArtAlphaPipeline(
        tokenizer=shared.tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=pixart_scheduler(),
    ).to(config.device)
    pipe.set_progress_bar_config(disable=True)
    judge = SceneMatchMetric(SceneMatchConfig(score="correct"))
    prompts = [caption.text for caption in held_out_captions() for _ in range(seeds)]
    result: dict[str, object] = {"variant": name, "train_s": round(seconds, 1), **dataclasses.asdict(config)}
    for scale in guidance:
        generators = [torch.Generator(config.device).manual_seed(i % seeds) for i in range(len(prompts))]
        with torch.no_grad():
            images = pipe(
                prompts,
                num_inference_steps=20,
                guidance_scale=scale,
                height=64,
                width=64,
                generator=generators,
                use_resolution_binning=False,
                clean_caption=False,
            ).images
        result[f"correct_g{scale:g}"] = float(np.mean(judge.score(images, prompts)))
    write_json_atomic(work / name / "result.json", result)
    typer.echo(json.dumps(result))


@app.command()
def table(work: WorkOption) -> None:
    """One row per finished variant: its settings that differ from the defaults and its accuracy."""
    defaults = dataclasses.asdict(TrainConfig())
    for path in sorted(work.glob("*/result.json")):
        result = json.loads(path.read_text())
        changed = {key: value for key, value in result.items() if key in defaults and defaults[key] != value}
        scores = {key: f"{value:.1%}" for key, value in result.items() if key.startswith("correct_")}
        typer.echo(f"{result['train_s']:>8.0f} s  {scores}  {changed}")


if __name__ == "__main__":
    app()
