"""The cache engine on tiny real pipelines of all three families."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from ecad.cache import CacheEngine, EngineOptions
from ecad.models import Role
from ecad.schedule import Schedule, fora, no_cache
from ecad.schedule.actions import Action, schedule_actions
from tests.helpers import FAMILIES, STEPS, EcadReference, architecture, build_pipeline, generate

PROMPTS = ["a red circle", "two blue squares on a yellow background"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, build_pipeline(request.param)


def random_schedule(pipe: Any, family: str, seed: int, steps: int = STEPS) -> Schedule:
    generator = torch.Generator().manual_seed(seed)
    arch = architecture(pipe, family)
    mask = torch.rand(steps, arch.num_blocks, 3, generator=generator) > 0.5
    return Schedule(mask, arch, name=f"random_{seed}")


@pytest.mark.parametrize("batch", [1, 2])
def test_no_cache_schedule_is_bit_identical_and_removal_restores(
    family_pipe: tuple[str, Any], batch: int
) -> None:
    family, pipe = family_pipe
    prompts, seeds = PROMPTS[:batch], [7, 8][:batch]
    stock = generate(pipe, family, prompts, seeds)
    with CacheEngine(pipe, no_cache(architecture(pipe, family), STEPS)):
        cached = generate(pipe, family, prompts, seeds)
    assert np.array_equal(cached, stock)

    with CacheEngine(pipe, fora(architecture(pipe, family), STEPS, 2)):
        changed = generate(pipe, family, prompts, seeds)
    assert not np.array_equal(changed, stock)  # caching really changed the computation
    assert np.array_equal(generate(pipe, family, prompts, seeds), stock)  # and removal undid it
    registries = [m._diffusers_hook for m in pipe.transformer.modules() if hasattr(m, "_diffusers_hook")]
    assert registries and all(registry.hooks == {} for registry in registries)


def test_a_component_runs_only_at_the_steps_that_compute_it(family_pipe: tuple[str, Any]) -> None:
    family, pipe = family_pipe
    schedule = random_schedule(pipe, family, seed=1)
    schedule.mask[:, 0, 0] = torch.tensor([True, False, False, True, False, True])
    component = schedule.block_groups()[0][0].components[0]
    module = schedule.adapter.blocks(pipe.transformer)[0].get_submodule(component.module_path)
    steps: list[int] = []
    calls: list[int] = []
    with CacheEngine(pipe, schedule):
        handles = [
            pipe.transformer.register_forward_pre_hook(lambda *_: steps.append(len(steps))),
            module.register_forward_hook(lambda *_: calls.append(steps[-1])),
        ]
        generate(pipe, family, PROMPTS[:1], [0])
        for handle in handles:
            handle.remove()
    column = schedule.effective_mask()[:, 0, 0].tolist()
    assert calls == [step for step, computes in enumerate(column) if computes]


def test_calls_in_a_row_match_each_call_alone(family_pipe: tuple[str, Any]) -> None:
    """Also after a call stopped between steps, as the server stops one (raising from the callback)."""
    family, pipe = family_pipe
    schedule = random_schedule(pipe, family, seed=2)
    with CacheEngine(pipe, schedule):
        alone = generate(pipe, family, PROMPTS[1:], [5])

    class StoppedError(Exception):
        pass

    def stop(step: int, _latents: torch.Tensor) -> None:
        if step == 2:
            raise StoppedError

    with CacheEngine(pipe, schedule):
        generate(pipe, family, PROMPTS[:1], [4])
        assert np.array_equal(generate(pipe, family, PROMPTS[1:], [5]), alone)
        with pytest.raises(StoppedError):
            generate(pipe, family, PROMPTS[:1], [4], **schedule.adapter.step_callback_kwargs(stop))
        assert np.array_equal(generate(pipe, family, PROMPTS[1:], [5]), alone)


def test_batch_invariance(family_pipe: tuple[str, Any]) -> None:
    family, pipe = family_pipe
    schedule = random_schedule(pipe, family, seed=3)
    with CacheEngine(pipe, schedule):
        alone = generate(pipe, family, PROMPTS[:1], [11])
        batched = generate(pipe, family, PROMPTS, [11, 12])
    # Batched BLAS kernels differ from single-row ones in the last bits even without caching.
    np.testing.assert_allclose(batched[0], alone[0], atol=2e-5)


def test_two_pipelines_do_not_interfere() -> None:
    pipe_a, pipe_b = build_pipeline("pixart_alpha", seed=0), build_pipeline("pixart_alpha", seed=1)
    schedule_a = random_schedule(pipe_a, "pixart_alpha", seed=4)
    schedule_b = fora(architecture(pipe_b, "pixart_alpha"), STEPS, 3)
    with CacheEngine(pipe_a, schedule_a):
        alone_a = generate(pipe_a, "pixart_alpha", PROMPTS[:1], [1])
    with CacheEngine(pipe_b, schedule_b):
        alone_b = generate(pipe_b, "pixart_alpha", PROMPTS[1:], [2])
    with CacheEngine(pipe_a, schedule_a), CacheEngine(pipe_b, schedule_b):
        # Interleave the two denoising loops step by step through the step callbacks.
        outputs = {}
        steps_b: list[int] = []

        # PixArt pipelines take the legacy `callback(step, timestep, latents)`.
        def step_b(step: int, _timestep: Any, _latents: torch.Tensor) -> None:
            steps_b.append(step)

        def step_a(step: int, _timestep: Any, _latents: torch.Tensor) -> None:
            if step == 2:
                outputs["b"] = generate(pipe_b, "pixart_alpha", PROMPTS[1:], [2], callback=step_b)

        outputs["a"] = generate(pipe_a, "pixart_alpha", PROMPTS[:1], [1], callback=step_a)
    assert steps_b == list(range(STEPS))
    assert np.array_equal(outputs["a"], alone_a)
    assert np.array_equal(outputs["b"], alone_b)


def test_slots_exist_only_for_reused_components_and_are_freed() -> None:
    pipe = build_pipeline("pixart_alpha")
    schedule = random_schedule(pipe, "pixart_alpha", seed=5)
    actions = schedule_actions(schedule)
    engine = CacheEngine(pipe, schedule)
    live_per_step: list[int] = []

    def count_live(_step: int, _timestep: Any, _latents: torch.Tensor) -> None:
        live_per_step.append(len(engine.slot_values()))

    with engine:
        generate(pipe, "pixart_alpha", PROMPTS[:1], [0], callback=count_live)
        stats = engine.last_call_stats()
    expected_live = ((actions == Action.COMPUTE_STORE) | (actions == Action.REUSE)).sum(dim=(1, 2)).tolist()
    assert live_per_step == expected_live
    assert live_per_step[-1] == 0  # nothing is held after the call
    effective = schedule.effective_mask()
    assert stats.computed == int(effective.sum()) and stats.reused == int((~effective).sum())


def test_flux_dead_work_is_skipped_without_changing_the_output() -> None:
    pipe = build_pipeline("flux")
    arch = architecture(pipe, "flux")
    mask = torch.ones(STEPS, arch.num_blocks, 3, dtype=torch.bool)
    mask[2:5, 2:, 2] = False  # single blocks reuse proj_out at steps 2-4 …
    mask[3, 2:, 0] = False  # … while attention is set to recompute at 2 and 4, reuse at 3
    schedule = Schedule(mask, arch, name="dead_work")
    actions = schedule_actions(schedule)
    assert (actions[2:5, 2:, :2] == Action.SKIP).all()

    reference = EcadReference(pipe, schedule)
    expected = generate(pipe, "flux", PROMPTS[:1], [3])
    reference.remove()
    single = pipe.transformer.single_transformer_blocks[0]
    calls: Counter[str] = Counter()
    handles = [
        single.attn.register_forward_hook(lambda *_: calls.update(["attn"])),
        single.proj_mlp.register_forward_hook(lambda *_: calls.update(["proj_mlp"])),
        single.norm.norm.register_forward_hook(lambda *_: calls.update(["norm"])),
    ]
    with CacheEngine(pipe, schedule) as engine:
        skipped = generate(pipe, "flux", PROMPTS[:1], [3])
        stats = engine.last_call_stats()
    for handle in handles:
        handle.remove()
    assert np.array_equal(skipped, expected)
    # Dead at steps 2-4: attention, MLP input projection and the norm feeding them.
    assert calls == {"attn": STEPS - 3, "proj_mlp": STEPS - 3, "norm": STEPS - 3}
    assert stats.skipped == 3 * 4 * 2
    assert stats.computed == int(schedule.effective_mask().sum()) - 5 * 4


def test_true_cfg_passes_keep_their_own_cache() -> None:
    """FLUX with true CFG calls the transformer twice per step; each pass must reuse its own values."""
    pipe = build_pipeline("flux")
    arch = architecture(pipe, "flux")
    schedule = fora(arch, STEPS, 2)
    transformer = pipe.transformer
    generator = torch.Generator().manual_seed(0)
    inputs = [
        {
            "encoder_hidden_states": torch.randn(1, 8, 32, generator=generator),
            "pooled_projections": torch.randn(1, 32, generator=generator),
            "txt_ids": torch.zeros(8, 3),
            "img_ids": torch.zeros(16, 3),
            "guidance": torch.tensor([3.5]),
        }
        for _ in range(2)
    ]
    timesteps = [torch.tensor([1.0 - 0.1 * step]) for step in range(STEPS)]

    def run(passes: list[dict[str, Any]]) -> list[torch.Tensor]:
        """As FluxPipeline calls it: new latents at every step, the same latents for both passes."""
        outputs = []
        latents = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(1))
        with CacheEngine(transformer, schedule), torch.no_grad():
            for timestep in timesteps:
                for kwargs in passes:
                    call = {"hidden_states": latents, "timestep": timestep, **kwargs}
                    outputs.append(transformer(**call, return_dict=False)[0])
                latents = latents - 0.1 * outputs[-len(passes)]
        return outputs

    alone = run(inputs[:1])
    together = run(inputs)
    for step in range(STEPS):
        assert torch.equal(together[2 * step], alone[step])


def test_misuse_is_reported() -> None:
    pipe = build_pipeline("pixart_alpha")
    arch = architecture(pipe, "pixart_alpha")
    with CacheEngine(pipe, no_cache(arch, 4)), pytest.raises(ValueError, match="num_inference_steps=4"):
        generate(pipe, "pixart_alpha", PROMPTS[:1], [0], steps=6)
    with (
        CacheEngine(pipe, no_cache(arch, 4)),
        pytest.raises(RuntimeError, match="already runs under a cache"),
    ):
        CacheEngine(pipe, no_cache(arch, 4)).apply()
    flux_arch = architecture(build_pipeline("flux"), "flux")
    with pytest.raises(TypeError, match="PixArtTransformer2DModel is not a flux transformer"):
        CacheEngine(pipe, no_cache(flux_arch, 4))
    block = pipe.transformer.transformer_blocks[0]
    block.set_chunk_feed_forward(2, 1)
    with pytest.raises(ValueError, match=r"feed-forward chunking is on; turn it off"):
        CacheEngine(pipe, no_cache(arch, 4))
    block.set_chunk_feed_forward(None)
    bigger = arch.__class__(arch.family, (28,), arch.hidden_size, arch.dims)
    with pytest.raises(ValueError, match=r"is for \(28,\) blocks, the model has \(2,\)"):
        CacheEngine(pipe, no_cache(bigger, 4))


def test_compiled_components_do_not_recompile_per_step() -> None:
    pipe = build_pipeline("pixart_alpha")
    torch._dynamo.reset()
    counters.clear()
    options = EngineOptions(compile_components=True, compile_options=(("backend", "eager"),))
    schedule = random_schedule(pipe, "pixart_alpha", seed=6, steps=8)
    with CacheEngine(pipe, schedule):
        eager = generate(pipe, "pixart_alpha", PROMPTS[:1], [0], steps=8)
    with CacheEngine(pipe, schedule, options):
        compiled = generate(pipe, "pixart_alpha", PROMPTS[:1], [0], steps=8)
    # One graph per component kind (attn1, attn2, ff), shared by every block and step.
    first = Counter(counters["stats"])
    assert first["unique_graphs"] == 3
    with CacheEngine(pipe, random_schedule(pipe, "pixart_alpha", seed=7, steps=8), options):
        generate(pipe, "pixart_alpha", PROMPTS[:1], [0], steps=8)
    assert Counter(counters["stats"])["unique_graphs"] == 3
    assert not counters["recompiles"]
    np.testing.assert_allclose(compiled, eager, atol=1e-6)


NORM_FEEDING_FEED_FORWARD = {"pixart_alpha": "norm2", "pixart_sigma": "norm2", "flux": "norm2"}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_norm_feeding_a_reused_component_does_not_run(family: str) -> None:
    pipe = build_pipeline(family)
    schedule = random_schedule(pipe, family, seed=8)
    group = schedule.block_groups()[0][0]
    index = next(i for i, c in enumerate(group.components) if c.role == Role.FEED_FORWARD)
    schedule.mask[:, 0, index] = torch.tensor([True, False, True, False, False, True])
    norm = schedule.adapter.blocks(pipe.transformer)[0].get_submodule(NORM_FEEDING_FEED_FORWARD[family])
    reference = EcadReference(pipe, schedule)
    expected = generate(pipe, family, PROMPTS[:1], [4])
    reference.remove()
    runs: list[int] = []
    with CacheEngine(pipe, schedule):
        handle = norm.register_forward_hook(lambda *_: runs.append(1))
        got = generate(pipe, family, PROMPTS[:1], [4])
        handle.remove()
    assert np.array_equal(got, expected)
    assert len(runs) == 3  # the steps where the feed-forward computes
