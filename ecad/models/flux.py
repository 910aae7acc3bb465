"""FLUX.1 (`FluxTransformer2DModel`): 19 double-stream and 38 single-stream blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from ecad.models.base import Architecture, BlockGroup, Component, Role, StepCallback, Workload

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


def _attention_placeholder(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> torch.Tensor:
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return hidden.new_empty(hidden.shape)


def _linear_placeholder(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> torch.Tensor:
    hidden = kwargs["input"] if "input" in kwargs else args[0]
    return hidden.new_empty((*hidden.shape[:-1], module.out_features))


DOUBLE_BLOCKS = BlockGroup(
    name="double",
    key_prefix="",
    count_key="num_blocks",
    components=(
        Component("full_attn", "attn", Role.JOINT_ATTENTION),
        Component("full_ff", "ff", Role.FEED_FORWARD, input_norm="norm2"),
        Component("full_ff_context", "ff_context", Role.FEED_FORWARD, input_norm="norm2_context"),
    ),
)
# In a single block, attention and the MLP input projection are read only by `proj_out` of the same
# block; when `proj_out` is reused their work is dead unless a later step reads the cached value.
SINGLE_BLOCKS = BlockGroup(
    name="single",
    key_prefix="single_",
    count_key="num_single_blocks",
    components=(
        Component("single_attn", "attn", Role.JOINT_ATTENTION, "single_proj_out", _attention_placeholder),
        Component("single_proj_mlp", "proj_mlp", Role.FEED_FORWARD, "single_proj_out", _linear_placeholder),
        Component("single_proj_out", "proj_out", Role.PROJECTION),
    ),
)


@dataclass(frozen=True)
class FluxAdapter:
    family: str = "flux"
    default_text_tokens: int = 512
    pipeline_class: str = "FluxPipeline"
    transformer_class: str = "FluxTransformer2DModel"
    groups: tuple[BlockGroup, ...] = (DOUBLE_BLOCKS, SINGLE_BLOCKS)

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
