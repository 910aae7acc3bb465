"""Counting what a transformer forward launches: the CPU proxy for GPU host cost.

At small batch on a GPU every kernel costs about 10 µs of host time, so the number of ATen ops that
launch a kernel is what a cached step costs there; it is deterministic and the same on CPU. Ops reach
a `TorchDispatchMode` after autograd, one per kernel: ops that return only read-only aliases of their
inputs are views (no kernel), `empty*` are allocations, `_local_scalar_dense` is a host read of a
tensor (`.item()`, `bool(t)`: a device sync on CUDA), everything else is a kernel op.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# `.item()` and `bool(t)` reach the mode as `_local_scalar_dense`, or, on inference tensors, as
# `item` and `is_nonzero` themselves.
HOST_SYNCS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")


@dataclass(frozen=True)
class OpCounts:
    kernels: int
    views: int
    allocations: int
    host_syncs: int


def _kind(op: torch._ops.OpOverload) -> str:
    schema = op._schema
    if schema.name in HOST_SYNCS:
        return "host_syncs"
    if schema.name.startswith(("aten::empty", "aten::new_empty")):
        return "allocations"
    returns = schema.returns
    if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return "views"
    return "kernels"


class OpCounter(TorchDispatchMode):
    """Counts every op dispatched while active; `per_forward` splits them by forwards of a module."""

    def __init__(self) -> None:
        super().__init__()
        self.totals: dict[str, int] = dict.fromkeys(("kernels", "views", "allocations", "host_syncs"), 0)
        self.names: dict[str, int] = {}

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kind = _kind(func)
        self.totals[kind] += 1
        if kind == "kernels":
            name = func._schema.name
            self.names[name] = self.names.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def snapshot(self) -> OpCounts:
        return OpCounts(**self.totals)


def difference(after: OpCounts, before: OpCounts) -> OpCounts:
    return OpCounts(
        after.kernels - before.kernels,
        after.views - before.views,
        after.allocations - before.allocations,
        after.host_syncs - before.host_syncs,
    )


@contextmanager
def count_forwards(module: torch.nn.Module) -> Iterator[tuple[OpCounter, list[OpCounts]]]:
    """Count ops while active; the list receives one `OpCounts` per forward of `module`."""
    counter = OpCounter()
    forwards: list[OpCounts] = []
    started: list[OpCounts] = []
    pre = module.register_forward_pre_hook(lambda *_: started.append(counter.snapshot()))
    post = module.register_forward_hook(
        lambda *_: forwards.append(difference(counter.snapshot(), started.pop()))
    )
    try:
        with counter:
            yield counter, forwards
    finally:
        pre.remove()
        post.remove()
