"""Caching schedules: the tensor, its ECAD JSON files and the heuristic families that seed the search."""

from ecad.schedule.heuristics import evenly_spaced, fora, fora_attention, no_cache, tgate
from ecad.schedule.io import ScheduleFileError, load_schedule, save_schedule, schedule_from_document
from ecad.schedule.schedule import Schedule, ScheduleMetadata

__all__ = [
    "Schedule",
    "ScheduleFileError",
    "ScheduleMetadata",
    "evenly_spaced",
    "fora",
    "fora_attention",
    "load_schedule",
    "no_cache",
    "save_schedule",
    "schedule_from_document",
    "tgate",
]
