"""The cache engine: executes a schedule on a diffusers transformer through module-instance hooks."""

from ecad.cache.engine import CacheEngine, CallStats, EngineOptions
from ecad.cache.plan import Action, build_plan

__all__ = ["Action", "CacheEngine", "CallStats", "EngineOptions", "build_plan"]
