"""Shared test inputs: tiny pipelines and the call arguments each family needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ecad.models import Architecture, architecture_of
from ecad.pipelines.tiny import tiny_flux_pipeline, tiny_pixart_pipeline
from ecad.schedule import Schedule

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "schedules" / "published"
FAMILIES = ("pixart_alpha", "pixart_sigma", "flux")
STEPS = 6
SIZE = 64


def build_pipeline(family: str, seed: int = 0) -> Any:
    if family == "flux":
        return tiny_flux_pipeline(seed=seed)
    return tiny_pixart_pipeline("sigma" if family == "pixart_sigma" else "alpha", seed=seed)


def architecture(pipe: Any, family: str) -> Architecture:
    return architecture_of(pipe.transformer, family)


def generate(
    pipe: Any, family: str, prompts: list[str], seeds: list[int], steps: int = STEPS, **pipeline_kwargs: Any
) -> np.ndarray:
    """Images as float arrays, one generator per image so each image's noise depends only on its seed."""
    extra: dict[str, Any] = (
        {} if family == "flux" else {"use_resolution_binning": False, "clean_caption": False}
    )
    return pipe(
        prompt=prompts,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        num_inference_steps=steps,
        height=SIZE,
        width=SIZE,
        output_type="np",
        **extra,
        **pipeline_kwargs,
    ).images


# A reloaded pipeline holds the same weights, but its tensors may sit differently in memory, and CPU
# kernels pick code paths by layout: outputs then differ in the last bits (seen up to 2e-6 on AMD EPYC).
RELOAD_ATOL = 1e-5


def assert_same_pipeline(
    loaded: Any, original: Any, family: str, prompts: list[str], seeds: list[int]
) -> None:
    """Every weight bit-identical; generated images equal within RELOAD_ATOL."""
    for name, component in original.components.items():
        if isinstance(component, torch.nn.Module):
            expected, got = component.state_dict(), loaded.components[name].state_dict()
            assert expected.keys() == got.keys(), name
            for key, tensor in expected.items():
                assert torch.equal(got[key], tensor), f"{name}.{key}"
    np.testing.assert_allclose(
        generate(loaded, family, prompts, seeds),
        generate(original, family, prompts, seeds),
        atol=RELOAD_ATOL,
        rtol=0,
    )


def noise_images(*shapes: tuple[int, int, int]) -> list[Image.Image]:
    """Uniform-noise images of the given (height, width, channels), drawn in order from one seeded stream."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)) for shape in shapes]


class EcadReference:
    """ECAD's semantics, deliberately simple and independent of the cache engine: each component either
    computes or returns its last computed output (per pass).

    Plain torch forward hooks on the component modules: every module always runs and, at steps the
    schedule reuses it, its output is replaced. Steps are counted in transformer forwards.
    """

    def __init__(self, pipe: Any, schedule: Schedule, passes_per_step: int = 1) -> None:
        self.compute = schedule.effective_mask().tolist()
        self.passes_per_step = passes_per_step
        self.forwards = 0
        self.last: dict[tuple[int, int, int], Any] = {}
        self.handles = [pipe.transformer.register_forward_pre_hook(self._count)]
        blocks = schedule.adapter.blocks(pipe.transformer)
        for block, ((group, _), module) in enumerate(zip(schedule.block_groups(), blocks, strict=True)):
            for index, component in enumerate(group.components):
                submodule = module.get_submodule(component.module_path)
                self.handles.append(submodule.register_forward_hook(self._hook(block, index)))

    def _count(self, *_: Any) -> None:
        self.forwards += 1

    def _hook(self, block: int, index: int) -> Any:
        def replace(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            step, pass_index = divmod(self.forwards - 1, self.passes_per_step)
            key = (block, index, pass_index)
            if self.compute[step][block][index]:
                self.last[key] = output
                return output
            return self.last[key]

        return replace

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
