"""Bounded headless load run: serve config.yaml's default model on loopback, drive it with the Locust
scenarios for a fixed time (or request count), stop everything, and write docs/load.md.

    python -m loadtests.run --duration 45 --users 6 --output docs/load.md     (what `make loadtest` runs)
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment

from harness.launcher import RunningServer, launch, served_config
from loadtests.locustfile import BURST_SIZE, ImageUser

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Record:
    name: str
    status: int | None  # None: no HTTP answer (connection error, client timeout)
    latency_ms: float
    images: int
    tier: str | None


@dataclass
class Results:
    records: list[Record] = field(default_factory=list)
    seconds: float = 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed latency, never an interpolation between two."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def drive(server: RunningServer, users: int, duration_s: float, max_requests: int | None) -> Results:
    ImageUser.host = server.base_url
    environment = Environment(user_classes=[ImageUser])
    results = Results()

    def on_request(name: str, response_time: float, response: Any, context: dict[str, Any], **_: Any) -> None:
        # Locust reports a request that got no HTTP answer with status 0.
        status = getattr(response, "status_code", 0) or None
        ok = status == 200
        tier = response.headers.get("x-ecad-tier") if ok else None
        images = context.get("n", 0) if ok else 0
        results.records.append(Record(name, status, response_time, images, tier))
        if len(results.records) == max_requests:
            # Not from inside this greenlet: quitting kills the users, this request's own among them.
            gevent.spawn(runner.quit)

    environment.events.request.add_listener(on_request)
    runner = environment.create_local_runner()
    started = gevent.get_hub().loop.now()
    runner.start(users, spawn_rate=users)  # all users at once: the ramp is not what is measured
    stopper = gevent.spawn_later(duration_s, runner.quit)
    runner.greenlet.join()
    stopper.kill()
    results.seconds = gevent.get_hub().loop.now() - started
    return results


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python {python}, torch {version('torch')}"


def report(results: Results, args: argparse.Namespace, config: dict[str, Any]) -> str:
    records = results.records
    valid = [r for r in records if not r.name.startswith("invalid:")]
    invalid = [r for r in records if r.name.startswith("invalid:")]
    model = config["models"][0]
    server = config.get("server", {})
    lines = [
        "# Load test",
        "",
        "A bounded Locust run against a real `ecad serve` on loopback (`loadtests/run.py`, scenarios in",
        "`loadtests/locustfile.py`): mixed `quality` tiers, `n` of 1/2/4, sizes 64²–256², bursts of "
        f"{BURST_SIZE}",
        "concurrent requests, and invalid requests that must be rejected with 400. Requests still in flight",
        "when the time runs out are not counted.",
        "",
        f"* command: `{args.command}`",
        f"* date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"* machine: {machine()}; load average (1 min) at the end: {os.getloadavg()[0]:.2f}",
        f"* model: `{model['id']}` (`{model['source']}`, {model['device']}, "
        f"{model.get('workers_per_device', 1)} worker), max_queue {server.get('max_queue', 32)}, "
        f"batch_window_ms {server.get('batch_window_ms', 10)}",
        f"* load: {args.users} users for {results.seconds:.1f} s, {len(records)} requests",
        "",
        "Latency is end to end at the client (ms), over requests answered 200. `quality` is what the",
        "request asked for; `served tier` is the server's `x-ecad-tier` answer.",
        "",
        "| quality | served tier | requests | 200 | 429 | errors | p50 ms | p95 ms | p99 ms | images/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_quality: dict[str, list[Record]] = defaultdict(list)
    for record in valid:
        by_quality[record.name].append(record)
    for quality, group in sorted(by_quality.items()):
        ok = [r for r in group if r.status == 200]
        tiers = ", ".join(sorted({r.tier for r in ok if r.tier})) or "–"
        if ok:
            p50, p95, p99 = (f"{percentile([r.latency_ms for r in ok], q):.0f}" for q in (50, 95, 99))
        else:
            p50 = p95 = p99 = "–"
        lines.append(
            f"| {quality} | {tiers} | {len(group)} | {len(ok)} | {sum(r.status == 429 for r in group)} "
            f"| {sum(r.status not in (200, 429) for r in group)} | {p50} | {p95} | {p99} "
            f"| {sum(r.images for r in ok) / results.seconds:.2f} |"
        )
    ok_all = [r for r in valid if r.status == 200]
    errors = [r for r in valid if r.status not in (200, 429)]
    rejected = [r for r in invalid if r.status == 400]
    share = len(valid) or 1
    lines += [
        "",
        "| totals | value |",
        "|---|---|",
        f"| throughput | {len(ok_all) / results.seconds:.2f} requests/s, "
        f"{sum(r.images for r in ok_all) / results.seconds:.2f} images/s |",
        f"| error rate (valid requests answered neither 200 nor 429) | {len(errors) / share:.1%} |",
        f"| 429 rate (queue full) | {sum(r.status == 429 for r in valid) / share:.1%} |",
        f"| invalid requests rejected with 400 and the right `param` | {len(rejected)} of {len(invalid)} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--duration", type=float, default=45.0, help="seconds of load (at most 600)")
    parser.add_argument("--max-requests", type=int, default=None, help="stop earlier after this many")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "load.md")
    args = parser.parse_args()
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600] seconds")
    args.command = shlex.join(["python", "-m", "loadtests.run", *sys.argv[1:]])
    config = served_config(args.config)
    # Loopback only: the launcher binds 127.0.0.1 whatever the config says.
    config["server"] = {**config.get("server", {}), "host": "127.0.0.1"}
    with tempfile.TemporaryDirectory(prefix="ecad-load-") as scratch:
        server = launch(config, Path(scratch))
        try:
            results = drive(server, args.users, args.duration, args.max_requests)
        finally:
            server.stop()
    if not results.records:
        sys.exit("no request completed")
    args.output.write_text(report(results, args, config))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
