"""The cache engine: executes a schedule on a diffusers transformer through module-instance hooks."""

from ecad.cache.engine import CacheEngine, CallStats, EngineOptions

__all__ = ["CacheEngine", "CallStats", "EngineOptions"]
