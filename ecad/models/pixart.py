"""PixArt-α / PixArt-Σ (`PixArtTransformer2DModel`): 3 components per `BasicTransformerBlock`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from ecad.models.base import (
    Architecture,
    BlockGroup,
    BlockRun,
    Component,
    Invariant,
    Role,
    StepCallback,
    Workload,
)

SELF_ATTENTION, CROSS_ATTENTION, FEED_FORWARD = range(3)


class PixArtBlockProgram:
    """`BasicTransformerBlock` with adaLN-single, as PixArt builds it (no GLIGEN, no positional
    embedding inside the block, cross-attention present).

    Every block adds its own `scale_shift_table` to the same timestep embedding: one add over the
    stacked tables serves all blocks of a forward, element for element the same sums.
    """

    def check(self, block: Any) -> None:
        if getattr(block, "norm_type", None) != "ada_norm_single":
            raise ValueError(f"PixArt blocks must use norm_type 'ada_norm_single', got {block.norm_type!r}")
        if block.pos_embed is not None or block.only_cross_attention or block.attn2 is None:
            raise ValueError(
                "PixArt blocks with pos_embed, only_cross_attention or no attn2 are not supported"
            )
        # Chunked feed-forward calls `ff` once per chunk: one cached value per step no longer fits.
        if block._chunk_size is not None:
            raise ValueError(
                "feed-forward chunking is on; turn it off (set_chunk_feed_forward(None)) to cache"
            )

    def __call__(
        self,
        block: Any,
        run: BlockRun,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        assert timestep is not None, "adaLN-single blocks need the embedded timestep"
        attention_kwargs = dict(cross_attention_kwargs or {})
        if "gligen" in attention_kwargs:
            raise ValueError("GLIGEN inputs are not supported under the cache engine")
        batch = hidden_states.shape[0]
        tables = run.per_call(
            "scale_shift_tables",
            lambda: torch.stack([cast(torch.Tensor, b.scale_shift_table) for b in run.group_blocks]),
        )
        modulation = run.per_forward(
            "modulation", lambda: tables[:, None] + timestep.reshape(1, batch, 6, -1)
        )
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation[run.position].chunk(
            6, dim=1
        )

        def self_attention() -> torch.Tensor:
            normed = block.norm1(hidden_states) * (1 + scale_msa) + shift_msa
            return block.attn1(
                normed, encoder_hidden_states=None, attention_mask=attention_mask, **attention_kwargs
            )

        hidden = gate_msa * run.output(SELF_ATTENTION, self_attention) + hidden_states
        if hidden.ndim == 4:
            hidden = hidden.squeeze(1)
        cross = run.output(
            CROSS_ATTENTION,
            lambda: block.attn2(
                hidden,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                **attention_kwargs,
            ),
        )
        hidden = cross + hidden

        def feed_forward() -> torch.Tensor:
            return block.ff(block.norm2(hidden) * (1 + scale_mlp) + shift_mlp)

        hidden = gate_mlp * run.output(FEED_FORWARD, feed_forward) + hidden
        if hidden.ndim == 4:
            hidden = hidden.squeeze(1)
        return hidden


BLOCKS = BlockGroup(
    name="transformer",
    key_prefix="",
    count_key="num_blocks",
    components=(
        Component("attn1", "attn1", Role.SELF_ATTENTION),
        Component("attn2", "attn2", Role.CROSS_ATTENTION),
        Component("ff", "ff", Role.FEED_FORWARD),
    ),
    program=PixArtBlockProgram(),
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
    # The caption projection reads only the prompt embeddings, the same tensor at every step.
    invariants: tuple[Invariant, ...] = (Invariant("caption_projection", ("encoder_hidden_states",)),)

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
