"""Offline schedule search (NSGA-II): candidates scored on calibration prompts, a Pareto front as registry.

`prepare(config)` → `run_search(setup)` → `write_outputs(run, provenance)`: the CLI only parses, runs
and writes."""

from ecad.search.config import SearchConfig, load_search_config
from ecad.search.front import SearchOutcome, write_outputs
from ecad.search.runner import SearchRun, run_search
from ecad.search.setup import SearchSetup, prepare

__all__ = [
    "SearchConfig",
    "SearchOutcome",
    "SearchRun",
    "SearchSetup",
    "load_search_config",
    "prepare",
    "run_search",
    "write_outputs",
]
