"""FLUX.1 (`FluxTransformer2DModel`): 19 double-stream and 38 single-stream blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.nn import functional

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

_MLP_RATIO = 4
_TIMESTEP_FREQ_DIM = 256

# FLUX.1-dev's transformer config, the architecture the published schedules were searched on.
FLUX_1_DEV: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}


ATTENTION, FEED_FORWARD, CONTEXT_FEED_FORWARD = range(3)
SINGLE_ATTENTION, MLP_IN, MLP_OUT = range(3)


def _adaln_activation(run: BlockRun, temb: torch.Tensor) -> torch.Tensor:
    """SiLU of the conditioning vector: every adaLN of every block applies it to the same `temb`."""
    return run.per_forward("adaln_activation", lambda: functional.silu(temb))


def _check_adaln(norm: Any) -> None:
    if getattr(norm, "emb", None) is not None:
        raise ValueError("FLUX blocks whose adaLN embeds its own timestep are not supported")


class DoubleBlockProgram:
    """`FluxTransformerBlock`: joint attention over image and text streams, a feed-forward for each."""

    def check(self, block: Any) -> None:
        _check_adaln(block.norm1)
        _check_adaln(block.norm1_context)

    def __call__(
        self,
        block: Any,
        run: BlockRun,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        activation = _adaln_activation(run, temb)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1.linear(activation).chunk(
            6, dim=1
        )
        c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = (
            block.norm1_context.linear(activation).chunk(6, dim=1)
        )

        def attention() -> tuple[torch.Tensor, ...]:
            normed = block.norm1.norm(hidden_states) * (1 + scale_msa[:, None]) + shift_msa[:, None]
            normed_context = (
                block.norm1_context.norm(encoder_hidden_states) * (1 + c_scale_msa[:, None])
                + c_shift_msa[:, None]
            )
            outputs = block.attn(
                hidden_states=normed,
                encoder_hidden_states=normed_context,
                image_rotary_emb=image_rotary_emb,
                **(joint_attention_kwargs or {}),
            )
            if len(outputs) != 2:
                raise ValueError("IP-Adapter attention is not supported under the cache engine")
            return cast(tuple[torch.Tensor, ...], outputs)

        attn_output, context_attn_output = run.output(ATTENTION, attention)
        hidden = hidden_states + gate_msa.unsqueeze(1) * attn_output

        def feed_forward() -> torch.Tensor:
            return block.ff(block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None])

        hidden = hidden + gate_mlp.unsqueeze(1) * run.output(FEED_FORWARD, feed_forward)
        context = encoder_hidden_states + c_gate_msa.unsqueeze(1) * context_attn_output

        def context_feed_forward() -> torch.Tensor:
            return block.ff_context(
                block.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
            )

        context = context + c_gate_mlp.unsqueeze(1) * run.output(CONTEXT_FEED_FORWARD, context_feed_forward)
        if context.dtype == torch.float16:
            context = context.clip(-65504, 65504)
        return context, hidden


class SingleBlockProgram:
    """`FluxSingleTransformerBlock`: attention and an MLP side by side on the joined streams, both read
    only by `proj_out`; while `proj_out` is reused they run only to keep a value a later step reads."""

    def check(self, block: Any) -> None:
        _check_adaln(block.norm)

    def __call__(
        self,
        block: Any,
        run: BlockRun,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_tokens = encoder_hidden_states.shape[1]
        joined = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        shift, scale, gate = block.norm.linear(_adaln_activation(run, temb)).chunk(3, dim=1)
        normed = None
        if run.computes(SINGLE_ATTENTION) or run.computes(MLP_IN):
            normed = block.norm.norm(joined) * (1 + scale[:, None]) + shift[:, None]
        mlp = run.output(MLP_IN, lambda: block.proj_mlp(normed))
        attn = run.output(
            SINGLE_ATTENTION,
            lambda: block.attn(
                hidden_states=normed, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {})
            ),
        )
        projected = run.output(MLP_OUT, lambda: block.proj_out(torch.cat([attn, block.act_mlp(mlp)], dim=2)))
        joined = joined + gate.unsqueeze(1) * projected
        if joined.dtype == torch.float16:
            joined = joined.clip(-65504, 65504)
        return joined[:, :text_tokens], joined[:, text_tokens:]


DOUBLE_BLOCKS = BlockGroup(
    name="double",
    key_prefix="",
    count_key="num_blocks",
    components=(
        Component("full_attn", "attn", Role.JOINT_ATTENTION),
        Component("full_ff", "ff", Role.FEED_FORWARD),
        Component("full_ff_context", "ff_context", Role.FEED_FORWARD),
    ),
    program=DoubleBlockProgram(),
)
SINGLE_BLOCKS = BlockGroup(
    name="single",
    key_prefix="single_",
    count_key="num_single_blocks",
    components=(
        Component("single_attn", "attn", Role.JOINT_ATTENTION, read_by="single_proj_out"),
        Component("single_proj_mlp", "proj_mlp", Role.FEED_FORWARD, read_by="single_proj_out"),
        Component("single_proj_out", "proj_out", Role.PROJECTION),
    ),
    program=SingleBlockProgram(),
)


@dataclass(frozen=True)
class FluxAdapter:
    family: str = "flux"
    default_text_tokens: int = 512
    pipeline_class: str = "FluxPipeline"
    transformer_class: str = "FluxTransformer2DModel"
    groups: tuple[BlockGroup, ...] = (DOUBLE_BLOCKS, SINGLE_BLOCKS)
    # Computed by the transformer at every step from inputs the pipeline passes unchanged.
    invariants: tuple[Invariant, ...] = (
        Invariant("pos_embed", ("txt_ids", "img_ids")),
        Invariant("context_embedder", ("encoder_hidden_states",)),
        Invariant("time_text_embed.text_embedder", ("pooled_projections",)),
    )

    @property
    def reference(self) -> Architecture:
        """FLUX.1-dev, the architecture the published schedules were searched on."""
        return self.architecture(FLUX_1_DEV)

    def architecture(self, config: dict[str, Any]) -> Architecture:
        hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        in_channels = int(config.get("in_channels", 64))
        patch = int(config.get("patch_size", 1))
        return Architecture(
            family=self.family,
            block_counts=(int(config["num_layers"]), int(config["num_single_layers"])),
            hidden_size=hidden,
            dims={
                "in_channels": in_channels,
                "out_channels": int(config.get("out_channels") or in_channels),
                "patch_size": patch,
                "joint_attention_dim": int(config.get("joint_attention_dim", 4096)),
                "pooled_projection_dim": int(config.get("pooled_projection_dim", 768)),
                "guidance_embeds": int(bool(config.get("guidance_embeds", True))),
            },
        )

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]:
        double = cast(torch.nn.ModuleList, transformer.transformer_blocks)
        single = cast(torch.nn.ModuleList, transformer.single_transformer_blocks)
        return [*double, *single]

    def image_tokens(self, arch: Architecture, height: int, width: int) -> int:
        cell = 16 * arch.dims["patch_size"]  # VAE ×8, then 2×2 latent packing
        return (height // cell) * (width // cell)

    def component_macs(self, arch: Architecture, work: Workload) -> dict[str, int]:
        d, n, t, b = arch.hidden_size, work.image_tokens, work.text_tokens, work.batch
        tokens = n + t
        return {
            "full_attn": b * 4 * tokens * d * d,
            "full_ff": b * 2 * _MLP_RATIO * n * d * d,
            "full_ff_context": b * 2 * _MLP_RATIO * t * d * d,
            "single_attn": b * 3 * tokens * d * d,
            "single_proj_mlp": b * _MLP_RATIO * tokens * d * d,
            "single_proj_out": b * (1 + _MLP_RATIO) * tokens * d * d,
        }

    def fixed_macs(self, arch: Architecture, work: Workload) -> int:
        d, n, t, b = arch.hidden_size, work.image_tokens, work.text_tokens, work.batch
        num_double, num_single = arch.block_counts
        adaln = (num_double * 12 + num_single * 3 + 2) * d * d  # block modulation and the final norm
        embedders = (1 + arch.dims["guidance_embeds"]) * (_TIMESTEP_FREQ_DIM * d + d * d)
        embedders += arch.dims["pooled_projection_dim"] * d + d * d
        patch_io = (
            n * d * (arch.dims["in_channels"] + arch.dims["patch_size"] ** 2 * arch.dims["out_channels"])
        )
        context = t * arch.dims["joint_attention_dim"] * d
        return b * (adaln + embedders + patch_io + context)

    # Guidance-distilled: no CFG pass, so a negative prompt would have no effect.
    supports_negative_prompt: bool = False

    def call_kwargs(self, with_embeds: bool = False) -> dict[str, Any]:
        return {} if with_embeds else {"max_sequence_length": self.default_text_tokens}

    def step_callback_kwargs(self, on_step: StepCallback) -> dict[str, Any]:
        def on_step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(step, tensors["latents"])
            return {}

        return {"callback_on_step_end": on_step_end, "callback_on_step_end_tensor_inputs": ["latents"]}

    def decode_latents(self, pipe: Any, latents: torch.Tensor, height: int, width: int) -> list[Any]:
        vae = pipe.vae
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")

    def prompt_tokens(self, pipe: Any, prompt: str) -> int:
        """T5 tokens the encoder reads (the pooled CLIP vector reads at most 77)."""
        return len(pipe.tokenizer_2(prompt, truncation=True, max_length=self.default_text_tokens).input_ids)

    def encode_prompts(
        self, pipe: Any, prompts: list[str], text_tokens: int | None = None, negative_prompt: str = ""
    ) -> dict[str, torch.Tensor]:
        """Text-encoder outputs as pipeline keyword arguments, one row per prompt.

        FLUX.1-dev is guidance-distilled: it runs no CFG pass, so the negative prompt has no effect.
        """
        embeds, pooled, _text_ids = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=pipe.device,
            max_sequence_length=text_tokens or self.default_text_tokens,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def slot_elements(self, arch: Architecture, work: Workload) -> dict[str, int]:
        d, n, t, b = arch.hidden_size, work.image_tokens, work.text_tokens, work.batch
        tokens = n + t
        return {
            "full_attn": b * tokens * d,
            "full_ff": b * n * d,
            "full_ff_context": b * t * d,
            "single_attn": b * tokens * d,
            "single_proj_mlp": b * _MLP_RATIO * tokens * d,
            "single_proj_out": b * tokens * d,
        }
