"""`ecad search` on a tiny real pipeline: the loop, kill-and-resume, Dask, outputs and bad settings."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ecad.config import ConfigError
from ecad.models import get_adapter
from ecad.registry import FRONT_FILE, RegistryError, load_registry
from ecad.schedule import fora, load_schedule, no_cache
from ecad.search import load_search_config
from ecad.search.archive import ArchivedCandidate
from ecad.search.prompts import read_prompts
from ecad.search.runner import heuristic_seeds, pareto_front
from ecad.tiers import Tier
from harness.launcher import ECAD
from harness.polling import wait_until

MODELS = """
models:
  - id: tiny
    family: pixart_alpha
    source: "random:tiny"
    steps: 6
    default_size: 64x64
"""
# No --model: the search takes the models config's first (and only) entry.
SEARCH = [
    "--prompts", "drawbench-200", "--prompt-limit", "3", "--images-per-prompt", "1",
    "--population", "8", "--generations", "3", "--metric", "ssim", "--threads", "1", "--no-progress",
]  # fmt: skip


def search_command(root: Path, name: str, *extra: str) -> list[str]:
    return [
        ECAD, "search", *SEARCH, "--models-config", str(root / "config.yaml"),
        "--state", str(root / f"state-{name}"), "--out", str(root / f"registry-{name}"), *extra,
    ]  # fmt: skip


def front_of(registry: Path) -> tuple[list[tuple], dict]:
    front = json.loads((registry / FRONT_FILE).read_text())
    points = [(p["digest"], p["quality_value"], p["tmacs"]) for p in front["points"]]
    return points, front["tiers"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search")
    (path / "config.yaml").write_text(MODELS)
    return path


@pytest.fixture(scope="module")
def uninterrupted(root: Path) -> Path:
    result = subprocess.run(
        search_command(root, "plain"), capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr
    return root / "registry-plain"


def test_search_writes_a_registry_the_server_can_load(uninterrupted: Path) -> None:
    front = json.loads((uninterrupted / FRONT_FILE).read_text())
    assert front["model_id"] == "tiny" and front["family"] == "pixart_alpha" and front["steps"] == 6
    assert front["reference"] == {"quality_metric": "ssim", "no_cache_value": 1.0}
    root = uninterrupted.parent
    assert front["provenance"] == (
        f"ecad search --models-config {root}/config.yaml --prompts drawbench-200 --prompt-limit 3 "
        f"--images-per-prompt 1 --population 8 --generations 3 --metric ssim "
        f"--out {root}/registry-plain --state {root}/state-plain --threads 1 --no-progress"
    )
    assert front["points"], "an empty front"
    tmacs = [p["tmacs"] for p in front["points"]]
    qualities = [p["quality_value"] for p in front["points"]]
    assert tmacs == sorted(tmacs, reverse=True)
    assert qualities == sorted(qualities, reverse=True)  # a Pareto front: cheaper is never better
    for point in front["points"]:
        schedule = load_schedule(uninterrupted / point["file"])
        assert schedule.digest() == point["digest"]
        assert schedule.metadata.quality_metric == "ssim" and schedule.metadata.resolution == (64, 64)
        assert not schedule.is_no_cache
    assert (uninterrupted / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # What `ecad serve` does at start-up: the registry loads without any manual step.
    registry = load_registry(uninterrupted, model_id="tiny", family="pixart_alpha", steps=6)
    assert registry.tiers["exact"].schedule.is_no_cache
    assert registry.tiers["best"].file in {p["file"] for p in front["points"]}
    summary = (uninterrupted / "summary.md").read_text()
    assert "| baseline `fora_every_3` |" in summary and "| baseline `no_cache` | exact | 1 |" in summary


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_stop_mid_generation_then_resume_gives_the_same_front(
    root: Path, uninterrupted: Path, signal_number: int
) -> None:
    name = f"stopped-{int(signal_number)}"
    state = root / f"state-{name}"
    process = subprocess.Popen(
        search_command(root, name),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # A test run started in the background (`make test &`) passes SIGINT on ignored; Ctrl-C must land.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    archive = state / "archive.sqlite"

    def inside_generation_1() -> bool:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        if not archive.exists():
            return False
        with sqlite3.connect(archive) as connection:
            evaluated = connection.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
        return evaluated >= 9  # generation 0 evaluates 8 candidates; the 9th is inside generation 1

    wait_until(inside_generation_1, "the search made no progress", timeout_s=300, interval_s=0.02)
    os.kill(process.pid, signal_number)
    _, stderr = process.communicate(timeout=120)
    if signal_number == signal.SIGINT:  # Ctrl-C: a clean stop with a hint
        assert process.returncode == 130
        assert "interrupted; the last finished generation is saved: rerun with --resume" in stderr.decode()
    else:
        assert process.returncode == -signal.SIGKILL
    assert pickle.loads((state / "checkpoint.pkl").read_bytes()).generation == 1  # generation 1 was in flight
    assert not (root / f"registry-{name}" / FRONT_FILE).exists()

    again = subprocess.run(
        search_command(root, name), capture_output=True, text=True, timeout=600, check=False
    )
    assert again.returncode == 2
    assert "holds an earlier search; pass --resume" in again.stderr

    resumed = subprocess.run(
        search_command(root, name, "--resume"), capture_output=True, text=True, timeout=600, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert front_of(root / f"registry-{name}") == front_of(uninterrupted)


def test_dask_local_cluster_gives_the_same_front(root: Path, uninterrupted: Path) -> None:
    result = subprocess.run(
        search_command(root, "dask", "--dask", "local:2"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert front_of(root / "registry-dask") == front_of(uninterrupted)


def test_resume_with_other_settings_is_refused(root: Path, uninterrupted: Path) -> None:
    result = subprocess.run(
        [*search_command(root, "plain", "--resume"), "--images-per-prompt", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "was made with other settings (images_per_prompt)" in result.stderr


def test_validation_prompts_rescore_the_front_and_pick_the_tiers(root: Path, uninterrupted: Path) -> None:
    # Validation only re-scores the finished front, so a finished search takes it on --resume.
    shutil.copytree(root / "state-plain", root / "state-validated")
    validated = ["--validation-prompts", "partiprompts", "--validation-prompt-limit", "2"]
    result = subprocess.run(
        search_command(root, "validated", "--resume", *validated),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    registry = root / "registry-validated"
    assert front_of(registry)[0] == front_of(uninterrupted)[0]  # the front itself is the search's
    front = json.loads((registry / FRONT_FILE).read_text())
    assert front["reference"] == {
        "quality_metric": "ssim",
        "no_cache_value": 1.0,
        "validation_no_cache_value": 1.0,
        "validation_prompts": "partiprompts",
    }
    points = front["points"]
    unvalidated = json.loads((uninterrupted / FRONT_FILE).read_text())["points"]
    assert {p["validation_value"] for p in unvalidated} == {None}
    assert all(0.0 < p["validation_value"] < 1.0 for p in points)
    assert [p["validation_value"] for p in points] != [p["quality_value"] for p in points]
    # The tier rule on the validation scores: each tier is the cheapest point within its loss ceiling.
    for tier, ceiling in ((Tier.BEST, 0.02), (Tier.BALANCED, 0.05), (Tier.FAST, 0.10)):
        eligible = [p for p in points if 1.0 - p["validation_value"] <= ceiling]
        expected = min(eligible, key=lambda p: (p["tmacs"], p["file"]))["file"] if eligible else None
        assert front["tiers"].get(tier) == expected
        if expected is not None:  # a file serving several tiers records the mildest
            assert load_schedule(registry / expected).metadata.tier in {
                named for named, file in front["tiers"].items() if file == expected
            }
    for point in points:
        assert load_schedule(registry / point["file"]).metadata.validation_value == point["validation_value"]
    summary = (registry / "summary.md").read_text()
    assert "| schedule | tier | ssim | validation | TMACs | MAC ratio | generation |" in summary
    assert "re-scored on 2 other prompts (`partiprompts`)" in summary
    assert "| baseline `no_cache` | exact | 1 | 1 |" in summary
    # One validation archive, holding the front and the five baselines, each once.
    architecture = load_schedule(registry / points[0]["file"]).architecture
    baselines = [no_cache(architecture, 6)] + [fora(architecture, 6, every) for every in range(2, 6)]
    expected = {p["digest"] for p in points} | {schedule.digest() for schedule in baselines}
    (archive,) = (root / "state-validated").glob("validation-*.sqlite")
    with sqlite3.connect(archive) as connection:
        archived = [row[0] for row in connection.execute("SELECT digest FROM evaluations")]
    assert sorted(archived) == sorted(expected)
    # Without the written tiers the server's own tier rule decides, on the validation scores too.
    (registry / FRONT_FILE).write_text(json.dumps({**front, "tiers": {}}))
    served = load_registry(registry, model_id="tiny", family="pixart_alpha", steps=6)
    for tier, file in front["tiers"].items():
        assert served.tiers[tier].file == file
    # A point without a validation score in a validated registry is an error naming the file.
    points[0]["validation_value"] = None
    (registry / FRONT_FILE).write_text(json.dumps(front))
    with pytest.raises(RegistryError) as error:
        load_registry(registry, model_id="tiny", family="pixart_alpha", steps=6)
    assert str(error.value) == (
        f"{registry / FRONT_FILE}: reference.validation_no_cache_value and a validation_value on every "
        "point go together (all or none)"
    )


def test_validation_prompts_must_differ_from_the_search_prompts(root: Path) -> None:
    result = subprocess.run(
        search_command(
            root, "overlap", "--validation-prompts", "drawbench-200", "--validation-prompt-limit", "5"
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    shared = min(read_prompts("drawbench-200", limit=3))  # the search's three prompts, first in sort order
    # The last line: importing the model stack may log warnings first.
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: validation prompts must differ from the search's; 3 are in both, e.g. {shared!r}"
    )
    assert not (root / "state-overlap" / "archive.sqlite").exists()


def test_bad_settings_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text("model: tiny\npopulation: 2\ncost: seconds\nmetric: lpips\n")
    with pytest.raises(ConfigError) as caught:
        load_search_config(path, {})
    assert str(caught.value).splitlines()[1:] == [
        "population: Input should be greater than or equal to 4",
        "metric: Value error, unknown metric 'lpips'; "
        "available: clip, fid, fidelity, image_reward, psnr, scene_correct, scene_match, ssim",
        "cost: Input should be 'macs' or 'latency'",
    ]
    with pytest.raises(
        ConfigError, match=r"\ndask: Value error, 'local:N' needs a positive worker count, got 'local:x'$"
    ):
        load_search_config(None, {"model": "tiny", "dask": "local:x"})


def test_heuristic_seeds_cover_the_paper_families() -> None:
    names = [s.name for s in heuristic_seeds(get_adapter("pixart_alpha").reference, 20)]
    assert names[0] == "no_cache"
    for expected in ("fora_every_2", "fora_every_20", "fora_attention_every_5", "tgate_m_10_sp_1_warmup_2",
                     "evenly_attn2_blocks_28_steps_10"):  # fmt: skip
        assert expected in names
    flux = [s.name for s in heuristic_seeds(get_adapter("flux").reference, 20)]
    assert not any(name.startswith("tgate") for name in flux)  # FLUX has no cross-attention
    assert len(set(names)) == len(names)


def test_pareto_front_keeps_only_non_dominated() -> None:
    bits = np.zeros(3, dtype=bool)
    points = [ArchivedCandidate(str(i), bits, quality, tmacs, None, 0) for i, (quality, tmacs) in
              enumerate([(0.9, 3.0), (0.8, 2.0), (0.7, 2.5), (0.95, 5.0), (0.6, 1.0)])]  # fmt: skip
    assert [c.digest for c in pareto_front(points, higher_is_better=True)] == ["4", "1", "0", "3"]


def test_prompt_files(tmp_path: Path) -> None:
    assert len(read_prompts("imagereward-100")) == 100
    assert read_prompts("partiprompts", limit=2) == ["bond", "element"]
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "a cat"}, "a dog", " "]))
    assert read_prompts(tmp_path / "p.json") == ["a cat", "a dog"]
    with pytest.raises(FileNotFoundError, match=r"prompt file .*missing\.txt does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_eval_rescores_the_front_with_baselines(root: Path, uninterrupted: Path) -> None:
    out = root / "eval"
    result = subprocess.run(
        [
            ECAD,
            "eval",
            "--registry",
            str(uninterrupted),
            "--models-config",
            str(root / "config.yaml"),
            "--prompts",
            "partiprompts",
            "--prompt-limit",
            "2",
            "--metric",
            "ssim",
            "--metric",
            "psnr",
            "--resolution",
            "96",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "eval.json").read_text())
    rows = len(report["rows"])
    assert "eval: 100%" in result.stderr and f" {rows}/{rows} " in result.stderr  # progress, one step a row
    assert report["resolution"] == [96, 96]
    assert report["metrics"] == ["ssim", "psnr"]
    kinds = [row["kind"] for row in report["rows"]]
    front = json.loads((uninterrupted / FRONT_FILE).read_text())["points"]
    assert kinds.count("front") == len(front)
    assert kinds.count("fora") == 4
    assert kinds[0] == "no_cache"
    assert "fewer_steps" in kinds
    exact = report["rows"][0]
    assert exact["scores"] == {"ssim": 1.0, "psnr": None}  # identical to itself: PSNR is infinite
    for row in report["rows"][1:]:
        assert row["scores"]["psnr"] is not None
        assert row["scores"]["ssim"] < 1.0 or row["kind"] == "front"
        assert row["latency_ms"] > 0
    assert (
        "| schedule | kind | tier | steps | TMACs | MAC ratio | ms/img | speed-up | ssim | psnr | Δ FORA |"
        in ((out / "eval.md").read_text())
    )


def test_eval_of_a_missing_registry_is_a_clear_error(root: Path) -> None:
    result = subprocess.run(
        [ECAD, "eval", "--registry", str(root / "nowhere"), "--models-config", str(root / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {root / 'nowhere'}: not a registry folder (no front.json)"
