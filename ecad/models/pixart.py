"""PixArt-α / PixArt-Σ (`PixArtTransformer2DModel`): 3 components per `BasicTransformerBlock`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from ecad.models.base import Architecture, BlockGroup, Component, Role, StepCallback, Workload

BLOCKS = BlockGroup(
    name="transformer",
    key_prefix="",
    count_key="num_blocks",
    components=(
        Component("attn1", "attn1", Role.SELF_ATTENTION, input_norm="norm1"),
        Component("attn2", "attn2", Role.CROSS_ATTENTION),
        Component("ff", "ff", Role.FEED_FORWARD, input_norm="norm2"),
    ),
)

# Timestep embedding input width of diffusers' `Timesteps` projection in PixArt.
_TIMESTEP_FREQ_DIM = 256

# PixArt XL-2's transformer config (α and Σ), the architecture the published schedules were searched on;
# the sample size is left to the caller, as it follows the resolution.
PIXART_XL_2: dict[str, Any] = {
    "num_layers": 28,
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": 8,
    "patch_size": 2,
    "cross_attention_dim": 1152,
    "caption_channels": 4096,
    "norm_type": "ada_norm_single",
}


@dataclass(frozen=True)
class PixArtAdapter:
    family: str
    default_text_tokens: int
    pipeline_class: str
    transformer_class: str = "PixArtTransformer2DModel"
    groups: tuple[BlockGroup, ...] = (BLOCKS,)

    @property
    def reference(self) -> Architecture:
        """PixArt XL-2, the architecture the published schedules were searched on."""
        return self.architecture(PIXART_XL_2)

    def architecture(self, config: dict[str, Any]) -> Architecture:
        hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        in_channels = int(config.get("in_channels", 4))
        return Architecture(
            family=self.family,
            block_counts=(int(config["num_layers"]),),
            hidden_size=hidden,
            dims={
                "in_channels": in_channels,
                "out_channels": int(config.get("out_channels") or in_channels),
                "patch_size": int(config.get("patch_size", 2)),
                "caption_channels": int(config.get("caption_channels", 4096)),
            },
        )

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        return list(cast(torch.nn.ModuleList, transformer.transformer_blocks))

    def image_tokens(self, arch: Architecture, height: int, width: int) -> int:
        cell = 8 * arch.dims["patch_size"]  # VAE ×8, then patchify
        return (height // cell) * (width // cell)

    def component_macs(self, arch: Architecture, work: Workload) -> dict[str, int]:
        d, n, t, b = arch.hidden_size, work.image_tokens, work.text_tokens, work.batch
        return {
            "attn1": b * 4 * n * d * d,
            "attn2": b * (2 * n + 2 * t) * d * d,
            "ff": b * 8 * n * d * d,
        }

    def fixed_macs(self, arch: Architecture, work: Workload) -> int:
        d, n, t, b = arch.hidden_size, work.image_tokens, work.text_tokens, work.batch
        patch_area = arch.dims["patch_size"] ** 2
        caption = t * (arch.dims["caption_channels"] * d + d * d)
        timestep = _TIMESTEP_FREQ_DIM * d + d * d + 6 * d * d  # embedder MLP and adaLN-single
        patch_io = n * d * patch_area * (arch.dims["in_channels"] + arch.dims["out_channels"])
        return b * (caption + timestep + patch_io)

    supports_negative_prompt: bool = True

    def call_kwargs(self, with_embeds: bool = False) -> dict[str, Any]:
        """Arguments every call needs: no aspect-ratio snapping (it would change the requested size),
        no caption cleaning (needs bs4/ftfy), the family's text length.

        With pre-encoded prompts the default negative prompt "" must be cleared, or the pipeline refuses.
        """
        kwargs: dict[str, Any] = {"use_resolution_binning": False, "clean_caption": False}
        if with_embeds:
            kwargs["negative_prompt"] = None
        else:
            kwargs["max_sequence_length"] = self.default_text_tokens
        return kwargs

    def step_callback_kwargs(self, on_step: StepCallback) -> dict[str, Any]:
        """PixArt pipelines only take the legacy `callback`; raising from it is the only way to stop."""
        return {"callback": lambda step, _timestep, latents: on_step(step, latents), "callback_steps": 1}

    def decode_latents(self, pipe: Any, latents: torch.Tensor, height: int, width: int) -> list[Any]:
        vae = pipe.vae
        image = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")

    def prompt_tokens(self, pipe: Any, prompt: str) -> int:
        """T5 tokens the encoder reads: longer prompts are truncated by the pipeline."""
        return len(pipe.tokenizer(prompt, truncation=True, max_length=self.default_text_tokens).input_ids)

    def encode_prompts(
        self, pipe: Any, prompts: list[str], text_tokens: int | None = None, negative_prompt: str = ""
    ) -> dict[str, torch.Tensor]:
        """Text-encoder outputs as pipeline keyword arguments, one row per prompt (CFG pair included)."""
        embeds, mask, negative, negative_mask = pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=True,
            negative_prompt=negative_prompt,
            device=pipe.device,
            clean_caption=False,
            max_sequence_length=text_tokens or self.default_text_tokens,
        )
        return {
            "prompt_embeds": embeds,
            "prompt_attention_mask": mask,
            "negative_prompt_embeds": negative,
            "negative_prompt_attention_mask": negative_mask,
        }

    def slot_elements(self, arch: Architecture, work: Workload) -> dict[str, int]:
        rows = work.batch * work.image_tokens * arch.hidden_size
        return {"attn1": rows, "attn2": rows, "ff": rows}
