"""Prompt files: text (one per line), JSON (strings or {"prompt": …} objects), TSV with a `Prompt` column."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

BUILTIN = {
    "imagereward-100": "ImageRewardPrompts.txt",
    "partiprompts": "PartiPrompts.tsv",
    "drawbench-200": "DrawBench200.txt",
    "shapes-calibration": "shapes-calibration.txt",
    "shapes-validation": "shapes-validation.txt",
    "shapes-held-out": "shapes-held-out.txt",
}


def builtin_prompt_file(name: str) -> Path:
    try:
        file = BUILTIN[name]
    except KeyError:
        raise ValueError(f"unknown prompt set {name!r}; built in: {', '.join(BUILTIN)}") from None
    return Path(str(resources.files("ecad.data") / "prompts" / file))


def read_prompts(source: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from a file path or a built-in set name, in file order, blank lines dropped."""
    path = builtin_prompt_file(str(source)) if str(source) in BUILTIN else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        items = json.loads(text)
        prompts = [item["prompt"] if isinstance(item, dict) else str(item) for item in items]
    elif path.suffix == ".tsv":
        rows = csv.DictReader(text.splitlines(), delimiter="\t")
        if rows.fieldnames is None or "Prompt" not in rows.fieldnames:
            raise ValueError(f"{path}: a TSV prompt file needs a 'Prompt' column")
        prompts = [row["Prompt"] for row in rows]
    else:
        prompts = text.splitlines()
    prompts = [prompt.strip() for prompt in prompts if prompt.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts[:limit] if limit else prompts
