"""What the rest of the library needs to know about one model family."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import torch


class Role(StrEnum):
    """What a component computes; heuristic schedules select components by role."""

    SELF_ATTENTION = "self_attention"
    CROSS_ATTENTION = "cross_attention"
    JOINT_ATTENTION = "joint_attention"
    FEED_FORWARD = "feed_forward"
    PROJECTION = "projection"

    @property
    def is_attention(self) -> bool:
        return self in (Role.SELF_ATTENTION, Role.CROSS_ATTENTION, Role.JOINT_ATTENTION)


StepCallback = Callable[[int, torch.Tensor], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Component:
    """One cacheable component: its ECAD name, the submodule it wraps (relative to its block) and role.

    `read_by` names the component of the same block that is the only consumer of this one's output,
    so its work is dead at steps where that consumer is reused.
    """

    name: str
    module_path: str
    role: Role
    read_by: str | None = None


class BlockRun(Protocol):
    """The cache engine's side of one block at the current step, as a block program sees it.

    Component indices are positions in the block group's `components`.
    """

    @property
    def position(self) -> int:
        """This block's index within its group."""
        ...

    @property
    def group_blocks(self) -> Sequence[torch.nn.Module]:
        """Every block of this block's group, in order."""
        ...

    def computes(self, component: int) -> bool:
        """Whether the component computes at this step (its inputs are then live)."""
        ...

    def output(self, component: int, compute: Callable[[], Any]) -> Any:
        """The component's output at this step: `compute()`, kept for later steps when one reads it, or
        the kept value. None where the schedule says nothing reads it (dead work, never computed)."""
        ...

    def per_forward(self, key: str, make: Callable[[], T]) -> T:
        """`make()` once per transformer forward, shared by every block (values that depend only on the
        forward's inputs, such as the adaLN activation)."""
        ...

    def per_call(self, key: str, make: Callable[[], T]) -> T:
        """`make()` once per pipeline call (values that depend only on the weights)."""
        ...


class BlockProgram(Protocol):
    """A block's forward written against a `BlockRun`: it computes a component, and the norm and
    modulation feeding it, only where the schedule computes that component, so a reused block runs only
    its live math. With every component computing it performs the stock forward's ops in the stock
    order, which keeps outputs bit-identical."""

    def check(self, block: torch.nn.Module) -> None:
        """Raise ValueError naming the setting if this block is configured in a way the program does not
        carry out."""
        ...

    def __call__(self, block: torch.nn.Module, run: BlockRun, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Invariant:
    """A submodule whose output depends only on some of the transformer's keyword arguments, which a
    pipeline passes as the same tensors at every step (the prompt embeddings, the position ids): the
    cache engine computes it once per call and pass instead of once per step."""

    module_path: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class BlockGroup:
    """A run of identical transformer blocks, in schedule order.

    `key_prefix` is how the ECAD JSON names the blocks ("" → "0", "1"…; "single_" → "single_0"…) and
    `count_key` the `cache_schedule` field holding their number.
    """

    name: str
    key_prefix: str
    count_key: str
    components: tuple[Component, ...]
    program: BlockProgram

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)


@dataclass(frozen=True)
class Architecture:
    """The sizes that fix a schedule's shape and the cost of each component.

    Built from a transformer's config (`adapter.architecture(config)`), so the same numbers serve the
    real model, the embedded model and a tiny test model. `dims` holds the family-specific widths used
    by the MAC formulas.
    """

    family: str
    block_counts: tuple[int, ...]
    hidden_size: int
    dims: dict[str, int] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return sum(self.block_counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "block_counts": list(self.block_counts),
            "hidden_size": self.hidden_size,
            "dims": dict(self.dims),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(
            family=str(data["family"]),
            block_counts=tuple(int(n) for n in data["block_counts"]),
            hidden_size=int(data["hidden_size"]),
            dims={str(k): int(v) for k, v in data.get("dims", {}).items()},
        )


@dataclass(frozen=True)
class Workload:
    """The input one transformer forward runs on: image tokens, text tokens and batch rows."""

    image_tokens: int
    text_tokens: int
    batch: int = 2


class ModelAdapter(Protocol):
    """Everything family-specific: blocks, components, hook points and MAC formulas.

    Adding a model family means adding one adapter and registering it in `ecad.models`.
    """

    # Read-only members: the adapters are frozen dataclasses.
    @property
    def family(self) -> str: ...
    @property
    def groups(self) -> tuple[BlockGroup, ...]: ...
    @property
    def default_text_tokens(self) -> int: ...
    @property
    def pipeline_class(self) -> str: ...
    @property
    def transformer_class(self) -> str: ...
    @property
    def supports_negative_prompt(self) -> bool: ...
    @property
    def reference(self) -> Architecture: ...
    @property
    def invariants(self) -> tuple[Invariant, ...]: ...

    def architecture(self, config: dict[str, Any]) -> Architecture: ...

    def blocks(self, transformer: torch.nn.Module) -> list[torch.nn.Module]: ...

    def image_tokens(self, arch: Architecture, height: int, width: int) -> int: ...

    def component_macs(self, arch: Architecture, work: Workload) -> dict[str, int]: ...

    def fixed_macs(self, arch: Architecture, work: Workload) -> int: ...

    def slot_elements(self, arch: Architecture, work: Workload) -> dict[str, int]: ...

    def call_kwargs(self, with_embeds: bool = False) -> dict[str, Any]: ...

    def encode_prompts(
        self, pipe: Any, prompts: list[str], text_tokens: int | None = None, negative_prompt: str = ""
    ) -> dict[str, torch.Tensor]: ...

    def step_callback_kwargs(self, on_step: StepCallback) -> dict[str, Any]:
        """Pipeline arguments that call `on_step(step, latents)` after every denoising step."""
        ...

    def decode_latents(self, pipe: Any, latents: torch.Tensor, height: int, width: int) -> list[Any]:
        """Intermediate latents as PIL images (what the run would give if it stopped there)."""
        ...

    def prompt_tokens(self, pipe: Any, prompt: str) -> int: ...
