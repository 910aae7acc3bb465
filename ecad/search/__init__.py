"""Offline schedule search (NSGA-II): candidates scored on calibration prompts, a Pareto front as registry."""

from ecad.search.config import SearchConfig, load_search_config
from ecad.search.front import SearchOutcome, searched_front, write_outputs
from ecad.search.runner import Search, prepare

__all__ = [
    "Search",
    "SearchConfig",
    "SearchOutcome",
    "load_search_config",
    "prepare",
    "searched_front",
    "write_outputs",
]
