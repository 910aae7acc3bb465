"""`python -m ecad.embedded.train pipeline|judge`: train the embedded model or its judge on this CPU.

Both commands are deterministic for a given seed. `pipeline` checkpoints into --work and resumes from it
when rerun (delete the folder to start over); both write their output folders atomically.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Annotated

import torch
import typer

from ecad.embedded.components import build_transformer
from ecad.embedded.judge import JudgeTrainConfig, train_judge
from ecad.embedded.scenes import OPEN_CELLS, all_captions, describe_open_cells, held_out_captions
from ecad.embedded.training import TrainConfig, Trainer
from ecad.files import write_text_atomic

MODELS = Path("models")
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.command()
def pipeline(
    out: Annotated[Path, typer.Option(help="pipeline folder")] = MODELS / "ecad-shapes",
    work: Annotated[Path, typer.Option(help="checkpoints, data and latents")] = Path("runs/embedded"),
    steps: Annotated[int, typer.Option(help="denoiser training steps")] = TrainConfig.steps,
    vae_steps: Annotated[int, typer.Option(help="VAE training steps")] = TrainConfig.vae_steps,
    images: Annotated[int, typer.Option(help="rendered training images")] = TrainConfig.images,
    seed: Annotated[int, typer.Option()] = TrainConfig.seed,
    device: Annotated[str, typer.Option(help="torch device to train on")] = TrainConfig.device,
    compile_steps: Annotated[
        bool, typer.Option("--compile/--no-compile", help="torch.compile the denoiser's training step")
    ] = TrainConfig.compile,
) -> None:
    """Train the VAE, then the text encoder and transformer, and write a diffusers pipeline folder."""
    config = TrainConfig(
        seed=seed, images=images, vae_steps=vae_steps, steps=steps, device=device, compile=compile_steps
    )
    timings = Trainer(config, work).run(out)
    write_text_atomic(out / "README.md", model_card(config, timings, out))
    typer.echo(f"wrote {out} ({_megabytes(out):.1f} MB); times: {timings}")


@app.command()
def judge(
    out: Annotated[Path, typer.Option(help="judge folder")] = MODELS / "ecad-shapes-judge",
    steps: Annotated[int, typer.Option(help="training steps")] = JudgeTrainConfig.steps,
    images: Annotated[int, typer.Option(help="rendered training images")] = JudgeTrainConfig.images,
    seed: Annotated[int, typer.Option()] = JudgeTrainConfig.seed,
) -> None:
    """Train the scene judge on the training captions and report its accuracy on held-out ones."""
    config = JudgeTrainConfig(seed=seed, images=images, steps=steps)
    report = train_judge(config, out)
    write_text_atomic(out / "README.md", judge_card(config, report))
    typer.echo(f"wrote {out}; held-out accuracy: {report}")


def _megabytes(folder: Path) -> float:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file()) / 1e6


def model_card(config: TrainConfig, timings: dict[str, float], out: Path) -> str:
    total_min = sum(timings.values()) / 60
    built = build_transformer(config.transformer_layers, config.transformer_width)
    parameters = sum(p.numel() for p in built.parameters())
    shape = f"{config.transformer_layers} blocks × {config.transformer_width}"
    transformer = f"`PixArtTransformer2DModel`, {shape}"
    settings = "\n".join(f"| `{key}` | {value} |" for key, value in asdict(config).items())
    where = describe_open_cells(OPEN_CELLS[config.open_cells])
    return f"""# ecad-shapes

The embedded default model of ecad-server: a small text-to-image PixArt-α pipeline (diffusers format)
trained from scratch on this repository's procedural scenes, so the server returns real pictures on a
CPU with no downloads. Loaded like any PixArt-α folder: `source: models/ecad-shapes`, `family: pixart_alpha`.

## What it knows
Captions of the grammar in `ecad/embedded/scenes.py`: one to three **circles, squares or triangles**,
coloured **red, green, blue, yellow or purple**; a single object may be placed **at the top left / top
right / bottom left / bottom right** or **in the center**; an optional **white, black or gray
background**. Examples: "a red circle", "two blue squares on a gray background", "a green triangle at the
top left". Objects whose position the caption leaves open were drawn
{where} (`open_cells: {config.open_cells}`).
{len(all_captions())} captions in all; {len(held_out_captions())} are held out (never trained on) and used
for evaluation. Prompts outside the grammar still produce an image, but it
shows shapes only: the model has never seen anything else.

## Parts
| part | class | size |
| --- | --- | --- |
| transformer | {transformer}, {parameters / 1e6:.2f} M parameters | 16² × 4 |
| VAE | `AutoencoderKL`, channels (16, 32, 64): 4× down-scaling | 64² RGB ↔ 16² × 4 |
| text encoder | `T5EncoderModel`, 2 layers × 128 | |
| tokenizer | `T5Tokenizer`, one piece per grammar word, characters as fallback (prompts are lower-cased) | |
| scheduler | `DPMSolverMultistepScheduler`, PixArt-α's settings (ε-prediction, linear β) | |

Renders at 64 × 64; the server's `render_size: 64x64` resizes each image to the requested size.

## Training
`python -m ecad.embedded.train pipeline` ({date.today().isoformat()}, {platform.machine()},
{torch.get_num_threads()} torch threads, torch {torch.__version__}): rendering {timings["render_s"]:.0f} s,
VAE {timings["vae_s"]:.0f} s, encoding {timings["encode_s"]:.0f} s, text encoder + transformer
{timings["denoiser_s"]:.0f} s; **{total_min:.1f} minutes** in all. Weights: {_megabytes(out):.1f} MB.

| setting | value |
| --- | --- |
{settings}

The VAE is trained first (L1 + L2 reconstruction, objects weighted ×{config.vae_object_weight:g}, KL
×{config.vae_kl_weight:g}); every training image is then encoded once. Its latent channels differ in
spread by about 3×, so a per-channel normalisation is folded into the VAE's 1×1 quant convolutions
(`scaling_factor` 1). The text encoder and transformer are then trained together on the ε-prediction
loss with min-SNR-{config.min_snr_gamma:g} weighting, {config.caption_dropout:.0%} empty captions (for
classifier-free guidance) and an EMA of the weights (decay {config.ema_decay}), which is what is saved.

## Limits
- 64 × 64 pictures of flat shapes; nothing else. Upscaled images look soft.
- Where a caption leaves the position open, the layout is the one it was trained on (above), whatever
  the seed; only sizes, small offsets and an unnamed background vary.
- Its quality is judged by `scene_match` / `scene_correct` (the judge in `models/ecad-shapes-judge`);
  see `docs/embedded.md` for the measured accuracy per tier.
"""


def judge_card(config: JudgeTrainConfig, report: dict[str, float]) -> str:
    accuracy = "\n".join(
        f"| {key.removesuffix('_accuracy')} | {value:.1%} |"
        for key, value in report.items()
        if key.endswith("_accuracy")
    )
    return f"""# ecad-shapes-judge

The reward of the embedded model: a five-layer CNN (`ecad.embedded.judge.SceneJudge`) that reads shape,
colour, count, background and the grid cell of a single object off a 64 × 64 image. As the metrics
`scene_match` (probability that every attribute the caption asks for holds) and `scene_correct` (1 when
its best reading matches them all) it judges whether an image shows what its caption says.

Trained by `OMP_NUM_THREADS=1 python -m ecad.embedded.train judge` ({date.today().isoformat()}, one CPU
thread, {report["train_s"]:.0f} s) on {config.images:,} rendered scenes of the training captions, with
blur, colour-gain and noise augmentation so that generated images stay in its distribution; measured on
{config.test_images:,} fresh scenes of the {len(held_out_captions())} held-out captions:

| attribute | accuracy |
| --- | --- |
{accuracy}

Limits: it knows only the grammar of `ecad/embedded/scenes.py`; prompts outside it are an error.
"""


if __name__ == "__main__":
    app()
