"""Candidate evaluation on Dask workers: a local in-process worker by default, `local:N`, or a cluster."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from dask.distributed import Client, LocalCluster, as_completed

from ecad.search.evaluator import Evaluation, EvaluationSetup, evaluate_bits


class CandidatePool:
    """Evaluates candidates on whatever workers the client has; the same code path for every layout.

    One pool serves a whole search: each evaluation setup (calibration, validation) is sent to the
    workers once, on first use."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._scattered: dict[str, Any] = {}

    def evaluate(
        self, setup: EvaluationSetup, candidates: Sequence[tuple[str, np.ndarray]]
    ) -> Iterator[tuple[int, Evaluation]]:
        """(index into `candidates`, result) in completion order, so each can be archived at once."""
        key = setup.key()
        if key not in self._scattered:
            self._scattered[key] = self.client.scatter(setup, broadcast=True)
        scattered = self._scattered[key]
        futures = [
            self.client.submit(evaluate_bits, scattered, bits, name, pure=False) for name, bits in candidates
        ]
        index_of = {future.key: index for index, future in enumerate(futures)}
        for future, evaluation in as_completed(futures, with_results=True):
            yield index_of[future.key], evaluation


@contextmanager
def open_pool(address: str | None) -> Iterator[CandidatePool]:
    """None: one in-process worker; `local:N`: N worker processes here; otherwise a scheduler address."""
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if address is None or address.startswith("local:"):
        workers = 1 if address is None else int(address.removeprefix("local:"))
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=address is not None,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        )
        with cluster, Client(cluster) as client:
            yield CandidatePool(client)
    else:
        with Client(address) as client:
            yield CandidatePool(client)
