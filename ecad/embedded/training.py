"""Train the embedded pipeline: the VAE first, then the text encoder and transformer together.

Sized for a 2-core CPU (`TrainConfig.device` also takes a GPU, for recipe sweeps). Each stage
checkpoints into a work folder and a rerun resumes where the last one stopped; the finished pipeline
is written with save_pretrained into a temporary folder and swapped in whole.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, PixArtAlphaPipeline, PixArtTransformer2DModel
from torch.nn import functional
from tqdm import tqdm
from transformers import T5EncoderModel

from ecad.embedded.components import (
    MAX_CAPTION_TOKENS,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
)
from ecad.embedded.scenes import OPEN_CELLS, render, scenes, training_captions
from ecad.files import atomic_write, write_json_atomic
from ecad.models.pipelines import pixart_pipeline, pixart_scheduler


@dataclass
class TrainConfig:
    """Sizes and schedules of both stages; the defaults are the committed model's."""

    seed: int = 0
    images: int = 24_000  # rendered once, encoded once, reused every epoch
    # Where objects go when the caption names no position (a key of OPEN_CELLS): "diagonal", one fixed
    # layout per count (with random cells the model drew extra objects: see docs/embedded.md), or
    # random cells among the five named positions ("named") or all nine ("every").
    open_cells: str = "diagonal"
    vae_steps: int = 800
    vae_object_weight: float = 20.0  # objects cover a few percent of the pixels but carry the caption
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    steps: int = 4_500
    batch: int = 64
    lr: float = 5e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty caption, for classifier-free guidance
    min_snr_gamma: float = 5.0
    transformer_layers: int = 8
    transformer_width: int = 128
    checkpoint_every: int = 200
    device: str = "cpu"
    # Inductor fuses the many small element-wise kernels of this narrow model: 1.6× faster steps on
    # 2 CPU cores after about 80 s of compiling.
    compile: bool = True

    def __post_init__(self) -> None:
        if self.open_cells not in OPEN_CELLS:
            raise ValueError(f"open_cells must be one of {list(OPEN_CELLS)}, got {self.open_cells!r}")


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_write(path) as handle:
        torch.save(obj, handle)


def _save_checkpoint(path: Path, step: int, elapsed_s: float, **parts: Any) -> None:
    """A resumable snapshot: each part's state dict, the steps done and the training time so far."""
    _save_atomic(
        {**{name: part.state_dict() for name, part in parts.items()}, "step": step, "elapsed_s": elapsed_s},
        path,
    )


def _object_weight(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weight: `weight` on objects, 1 on the flat background (read off the corners)."""
    corners = torch.stack([x[:, :, 0, 0], x[:, :, 0, -1], x[:, :, -1, 0], x[:, :, -1, -1]])
    background = corners.median(dim=0).values[:, :, None, None]
    on_object = (x - background).abs().sum(dim=1, keepdim=True) > 0.1
    return 1.0 + (weight - 1.0) * on_object.float()


class Trainer:
    """Runs (or resumes) both stages in `work` and writes the pipeline folder."""

    def __init__(self, config: TrainConfig, work: Path) -> None:
        self.config = config
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.tokenizer = build_tokenizer()
        self.captions = training_captions()

    # Every stage returns its own time, kept in its file: a resumed run reports the work, not the resumption.
    # Stage 0: the data, rendered once from the training captions.
    def dataset(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        path = self.work / "images.pt"
        if path.exists():
            data = torch.load(path)
            return data["pixels"], data["captions"], data["elapsed_s"]
        began = time.monotonic()
        stream = scenes(self.captions, seed=self.config.seed, open_cells=OPEN_CELLS[self.config.open_cells])
        images, caption_ids = [], []
        index = {caption: i for i, caption in enumerate(self.captions)}
        for _ in tqdm(range(self.config.images), desc="render", unit="img"):
            caption, scene = next(stream)
            images.append(np.asarray(render(scene), dtype=np.uint8))
            caption_ids.append(index[caption])
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        captions = torch.tensor(caption_ids)
        elapsed = time.monotonic() - began
        _save_atomic({"pixels": pixels, "captions": captions, "elapsed_s": elapsed}, path)
        return pixels, captions, elapsed

    # Stage 1: the VAE.
    def train_vae(self, pixels: torch.Tensor) -> tuple[AutoencoderKL, float]:
        done = self.work / "vae.pt"
        vae = build_vae()
        if done.exists():
            state = torch.load(done)
            vae.load_state_dict(state["model"])
            return vae.eval(), state["elapsed_s"]
        config = self.config
        vae.to(config.device)
        partial = self.work / "vae.partial.pt"
        optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
        start, elapsed = 0, 0.0
        if partial.exists():
            state = torch.load(partial)
            vae.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start, elapsed = state["step"], state["elapsed_s"]
        generator = torch.Generator().manual_seed(config.seed + 1)
        vae.train()
        began = time.monotonic()
        bar = tqdm(range(start, config.vae_steps), desc="vae", initial=start, total=config.vae_steps)
        for step in bar:
            torch.manual_seed(config.seed * 100_003 + step)
            batch = pixels[torch.randint(len(pixels), (config.vae_batch,), generator=generator)]
            x = batch.to(config.device).float() / 127.5 - 1.0
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample()).sample
            error = (reconstruction - x).abs() + (reconstruction - x).square()
            loss = (
                error * _object_weight(x, config.vae_object_weight)
            ).mean() + config.vae_kl_weight * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(l1=f"{functional.l1_loss(reconstruction, x).item():.4f}")
            if (step + 1) % config.checkpoint_every == 0:
                _save_checkpoint(
                    partial, step + 1, elapsed + time.monotonic() - began, model=vae, optimizer=optimizer
                )
        elapsed += time.monotonic() - began
        vae.cpu()
        _save_atomic({"model": vae.state_dict(), "elapsed_s": elapsed}, done)
        partial.unlink(missing_ok=True)
        return vae.eval(), elapsed

    def encode(self, vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Posterior mean and std of every image (VAE latents before normalisation)."""
        path = self.work / "latents.pt"
        if path.exists():
            data = torch.load(path)
            return data["mean"], data["std"], data["elapsed_s"]
        means, stds = [], []
        began = time.monotonic()
        device = self.config.device
        vae.to(device)
        with torch.no_grad():
            for start in tqdm(range(0, len(pixels), 256), desc="encode"):
                x = pixels[start : start + 256].to(device).float() / 127.5 - 1.0
                posterior = vae.encode(x).latent_dist
                means.append(posterior.mean.cpu())
                stds.append(posterior.std.cpu())
        vae.cpu()
        mean, std = torch.cat(means), torch.cat(stds)
        elapsed = time.monotonic() - began
        _save_atomic({"mean": mean, "std": std, "elapsed_s": elapsed}, path)
        return mean, std, elapsed

    def caption_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and masks, [caption + 1, token]; the last row is the empty caption."""
        texts = [caption.text for caption in self.captions] + [""]
        encoded = self.tokenizer(
            texts, padding="max_length", max_length=MAX_CAPTION_TOKENS, truncation=True, return_tensors="pt"
        )
        return encoded.input_ids, encoded.attention_mask

    # Stage 2: text encoder and transformer, trained together on the diffusion loss.
    def train_denoiser(
        self, latents: tuple[torch.Tensor, torch.Tensor], caption_ids: torch.Tensor
    ) -> tuple[T5EncoderModel, PixArtTransformer2DModel, float]:
        """Trains on latents normalised per channel (see `normalise_latents`)."""
        config = self.config
        mean, std = latents
        shift, scale = channel_statistics(mean, std)
        mean, std = (mean - shift) / scale, std / scale
        device = config.device
        modules = self._denoiser().to(device)
        ema = self._denoiser().to(device)
        ema.load_state_dict(modules.state_dict())
        optimizer = torch.optim.AdamW(modules.parameters(), lr=config.lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self._lr_factor(step))
        checkpoint = self.work / "denoiser.pt"
        start, elapsed = 0, 0.0
        if checkpoint.exists():
            state = torch.load(checkpoint)
            modules.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            start, elapsed = state["step"], state["elapsed_s"]
        if start >= config.steps:
            return ema["text_encoder"].cpu().eval(), ema["transformer"].cpu().eval(), elapsed

        alphas_cumprod = pixart_scheduler().alphas_cumprod
        tokens, masks = self.caption_tokens()
        loss_of = torch.compile(denoising_loss) if config.compile else denoising_loss
        parameters: list[torch.Tensor] = list(modules.parameters())
        ema_parameters: list[torch.Tensor] = list(ema.parameters())
        modules.train()
        began = time.monotonic()
        bar = tqdm(range(start, config.steps), desc="denoiser", initial=start, total=config.steps)
        for step in bar:
            # Per-step seeding: a resumed run draws the batches an uninterrupted one would have.
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            rows = torch.randint(len(mean), (config.batch,), generator=generator)
            noise_latent = torch.randn(mean[rows].shape, generator=generator)
            x0 = mean[rows] + std[rows] * noise_latent
            dropped = torch.rand(config.batch, generator=generator) < config.caption_dropout
            caption = torch.where(dropped, len(self.captions), caption_ids[rows])
            ids, mask = tokens[caption], masks[caption]
            t = torch.randint(0, len(alphas_cumprod), (config.batch,), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            a = alphas_cumprod[t]
            # Min-SNR-γ weighting (Hang et al., 2023): low-noise steps stop dominating the gradient.
            snr = a / (1 - a)
            weight = snr.clamp(max=config.min_snr_gamma) / snr
            noisy = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
            batch = [tensor.to(device) for tensor in (noisy, noise, t, weight, ids, mask)]
            loss = loss_of(modules["text_encoder"], modules["transformer"], *batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_parameters, parameters, 1 - decay)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                _save_checkpoint(
                    checkpoint,
                    step + 1,
                    elapsed + time.monotonic() - began,
                    model=modules,
                    ema=ema,
                    optimizer=optimizer,
                    schedule=schedule,
                )
        elapsed += time.monotonic() - began
        return ema["text_encoder"].cpu().eval(), ema["transformer"].cpu().eval(), elapsed

    def _denoiser(self) -> torch.nn.ModuleDict:
        config = self.config
        return torch.nn.ModuleDict(
            {
                "text_encoder": build_text_encoder(len(self.tokenizer)),
                "transformer": build_transformer(config.transformer_layers, config.transformer_width),
            }
        )

    def _lr_factor(self, step: int) -> float:
        config = self.config
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def run(self, out: Path) -> dict[str, Any]:
        """Train (or resume) everything and write the pipeline to `out`; returns the timings."""
        random.seed(self.config.seed)
        torch.manual_seed(self.config.seed)
        pixels, caption_ids, render_s = self.dataset()
        vae, vae_s = self.train_vae(pixels)
        mean, std, encode_s = self.encode(vae, pixels)
        text_encoder, transformer, denoiser_s = self.train_denoiser((mean, std), caption_ids)
        normalise_latents(vae, *channel_statistics(mean, std))
        # A fresh tokenizer: the training one keeps its fixed padding, which save_pretrained would store.
        pipe = pixart_pipeline(transformer, vae, build_tokenizer(), text_encoder)
        write_pipeline(pipe, out)
        seconds = {"render": render_s, "vae": vae_s, "encode": encode_s, "denoiser": denoiser_s}
        timings = {f"{stage}_s": round(float(value), 1) for stage, value in seconds.items()}
        write_json_atomic(self.work / "timings.json", {"config": asdict(self.config), **timings})
        return timings


def denoising_loss(
    text_encoder: T5EncoderModel,
    transformer: PixArtTransformer2DModel,
    noisy: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Weighted ε-prediction loss of one batch, text encoder included."""
    text = text_encoder(ids, attention_mask=mask).last_hidden_state
    prediction = transformer(
        noisy,
        encoder_hidden_states=text,
        encoder_attention_mask=mask,
        timestep=timesteps,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    ).sample
    return (weight * (prediction - noise).square().mean(dim=(1, 2, 3))).mean()


def channel_statistics(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of sampled latents, shaped [1, C, 1, 1]."""
    shift = mean.mean(dim=(0, 2, 3), keepdim=True)
    variance = mean.var(dim=(0, 2, 3), keepdim=True) + std.square().mean(dim=(0, 2, 3), keepdim=True)
    return shift, variance.sqrt()


def normalise_latents(vae: AutoencoderKL, shift: torch.Tensor, scale: torch.Tensor) -> None:
    """Fold a per-channel latent normalisation into the VAE's 1×1 quant convolutions, in place.

    The PixArt pipeline only knows one scalar `scaling_factor`; VAE channels here differ in spread by
    3×, which would drown the narrow ones in noise first. Afterwards the encoder emits (z − shift) / scale
    and the decoder takes it, so the pipeline runs with scaling_factor 1.
    """
    shift, scale = shift.view(-1), scale.view(-1)
    channels = len(shift)
    with torch.no_grad():
        quant = vae.quant_conv  # outputs [mean (C), log-variance (C)]
        quant.weight[:channels] /= scale.view(-1, 1, 1, 1)
        quant.bias[:channels] = (quant.bias[:channels] - shift) / scale
        quant.bias[channels:] -= 2 * scale.log()
        post = vae.post_quant_conv  # input z = scale · z' + shift
        post.bias += post.weight[:, :, 0, 0] @ shift
        post.weight *= scale.view(1, -1, 1, 1)
    vae.register_to_config(scaling_factor=1.0)


def write_pipeline(pipe: PixArtAlphaPipeline, out: Path) -> None:
    """save_pretrained into a sibling temporary folder, then swap it in: `out` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    previous = out.with_name(f".{out.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.replace(previous)
    staging.replace(out)
    shutil.rmtree(previous, ignore_errors=True)
