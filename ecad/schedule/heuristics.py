"""Hand-made schedule families (ECAD's seeds and baselines): no-cache, FORA, TGATE-like, evenly spaced."""

from __future__ import annotations

import torch

from ecad.models import Architecture, Role, get_adapter
from ecad.schedule.schedule import Schedule


def _blank(architecture: Architecture, steps: int) -> torch.Tensor:
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    width = len(get_adapter(architecture.family).groups[0].components)
    return torch.ones(steps, architecture.num_blocks, width, dtype=torch.bool)


def _role_mask(architecture: Architecture, wanted: set[Role]) -> torch.Tensor:
    """[blocks, components] True where the component's role is one of `wanted`."""
    adapter = get_adapter(architecture.family)
    rows = [
        [component.role in wanted for component in group.components]
        for group, count in zip(adapter.groups, architecture.block_counts, strict=True)
        for _ in range(count)
    ]
    return torch.tensor(rows, dtype=torch.bool)


def no_cache(architecture: Architecture, steps: int = 20) -> Schedule:
    return Schedule(_blank(architecture, steps), architecture, name="no_cache")


def fora(architecture: Architecture, steps: int = 20, every: int = 3) -> Schedule:
    """FORA: recompute everything every `every` steps (step 0 included), reuse in between."""
    if every < 2:
        raise ValueError(f"FORA needs every ≥ 2, got {every}")
    mask = _blank(architecture, steps)
    mask[torch.arange(steps) % every != 0] = False
    return Schedule(mask, architecture, name=f"fora_every_{every}")


def fora_attention(architecture: Architecture, steps: int = 20, every: int = 3) -> Schedule:
    """FORA restricted to attention: attention recomputed every `every` steps, the rest always."""
    if every < 2:
        raise ValueError(f"FORA needs every ≥ 2, got {every}")
    attention = _role_mask(architecture, {Role.SELF_ATTENTION, Role.CROSS_ATTENTION, Role.JOINT_ATTENTION})
    mask = _blank(architecture, steps)
    for step in range(steps):
        if step % every != 0:
            mask[step] &= ~attention
    return Schedule(mask, architecture, name=f"fora_attention_every_{every}")


def tgate(
    architecture: Architecture,
    steps: int = 20,
    gate_step: int = 10,
    self_attn_every: int = 1,
    warmup: int = 2,
) -> Schedule:
    """TGATE-like: cross-attention reused from `gate_step` on; before it, after a full `warmup`,
    self-attention is recomputed every `self_attn_every` steps. Feed-forward always runs."""
    if not 0 < gate_step <= steps:
        raise ValueError(f"gate_step must be in 1..{steps}, got {gate_step}")
    if self_attn_every < 1 or warmup < 1:
        raise ValueError("self_attn_every and warmup must be ≥ 1")
    cross = _role_mask(architecture, {Role.CROSS_ATTENTION})
    if not cross.any():
        raise ValueError(f"{architecture.family} has no cross-attention component; TGATE does not apply")
    self_attn = _role_mask(architecture, {Role.SELF_ATTENTION})
    mask = _blank(architecture, steps)
    for step in range(warmup, steps):
        if step < gate_step and (step - warmup) % self_attn_every != 0:
            mask[step] &= ~self_attn
        if step >= gate_step:
            mask[step] &= ~cross
    name = f"tgate_m_{gate_step}_sp_{self_attn_every}_warmup_{warmup}"
    return Schedule(mask, architecture, name=name)


def evenly_spaced(
    architecture: Architecture, component: str, num_blocks: int, num_steps: int, steps: int = 20
) -> Schedule:
    """Reuse one component in `num_blocks` evenly spaced blocks on `num_steps` steps centred in the run."""
    adapter = get_adapter(architecture.family)
    names = [c.name for group in adapter.groups for c in group.components]
    if component not in names:
        raise ValueError(
            f"unknown component {component!r} for {architecture.family}; expected one of {names}"
        )
    if not 1 <= num_steps < steps:
        raise ValueError(f"num_steps must be in 1..{steps - 1}, got {num_steps}")
    holders = [
        (block, list(group.component_names).index(component))
        for block, group in enumerate(
            group
            for group, count in zip(adapter.groups, architecture.block_counts, strict=True)
            for _ in range(count)
        )
        if component in group.component_names
    ]
    if not 1 <= num_blocks <= len(holders):
        raise ValueError(f"num_blocks must be in 1..{len(holders)}, got {num_blocks}")
    chosen = torch.linspace(0, len(holders) - 1, num_blocks).round().long().unique()
    first = max(1, (steps - num_steps) // 2)
    mask = _blank(architecture, steps)
    for index in chosen.tolist():
        block, slot = holders[index]
        mask[first : first + num_steps, block, slot] = False
    return Schedule(mask, architecture, name=f"evenly_{component}_blocks_{num_blocks}_steps_{num_steps}")
