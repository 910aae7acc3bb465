"""Run-time state shared between the API processes and the workers through one folder.

Files, not a manager: every process can reach them without pickling proxies, and a crashed process
leaves nothing locked. Layout under the state folder:
  cancel/<uid>      a request whose client left or whose deadline passed; workers stop it between steps
  images/<id>.<ext> images served by `GET /v1/images/{id}` until their time-to-live ends
  workers/<pid>     a live inference worker (its model id inside), for /readyz and crash detection
  prometheus/       the Prometheus multiprocess files
  draining          present once SIGTERM arrived: no new requests, in-flight ones finish

Everything but `images/` belongs to one run: `start_run` clears it, so a server restarted on a kept
folder (a Kubernetes emptyDir survives container restarts) starts clean. One server per folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ecad.files import write_bytes_atomic, write_text_atomic

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
IMAGE_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}\.(?:png|jpeg|webp)$")


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by its parent) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def prometheus(self) -> Path:
        return self.root / "prometheus"

    def start_run(self) -> None:
        """Create the layout and drop what an earlier run left: its drain mark, workers, cancel marks
        and metrics. URL images stay until their time-to-live ends."""
        for sub in ("cancel", "images", "workers", "prometheus"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "draining").unlink(missing_ok=True)
        for sub in ("cancel", "workers", "prometheus"):
            for path in (self.root / sub).iterdir():
                path.unlink(missing_ok=True)

    # shutdown
    def start_draining(self) -> None:
        (self.root / "draining").touch()

    def is_draining(self) -> bool:
        return (self.root / "draining").exists()

    # cancellation
    def cancel(self, uid: str, max_age_s: float) -> None:
        """Mark `uid` cancelled. The worker deletes the mark when it ends the job; marks older than
        `max_age_s` (the server deadline: their job is past it and stops anyway) are swept here, which
        catches a mark made just after its worker had finished."""
        folder = self.root / "cancel"
        cutoff = time.time() - max_age_s
        for path in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
        (folder / uid).touch()

    def is_cancelled(self, uid: str) -> bool:
        return (self.root / "cancel" / uid).exists()

    def forget(self, uid: str) -> None:
        (self.root / "cancel" / uid).unlink(missing_ok=True)

    # workers
    def register_worker(self, model: str) -> None:
        write_text_atomic(self.root / "workers" / str(os.getpid()), model)

    def live_workers(self) -> dict[int, str]:
        """pid → model of workers that are running; files of dead ones are removed."""
        workers = {}
        for path in (self.root / "workers").iterdir():
            if not path.name.isdigit():
                continue
            pid = int(path.name)
            if process_alive(pid):
                workers[pid] = path.read_text()
            else:
                path.unlink(missing_ok=True)
        return workers

    # url images
    def store_image(self, data: bytes, output_format: str, ttl_s: int, max_bytes: int) -> str:
        """Keep an image for `ttl_s`; the oldest kept images go first when all exceed `max_bytes`."""
        image_id = f"{secrets.token_urlsafe(18)}.{output_format}"
        write_bytes_atomic(self.root / "images" / image_id, data)
        self._purge_images(ttl_s, max_bytes)
        return image_id

    def image_path(self, image_id: str, ttl_s: int) -> Path | None:
        if not IMAGE_ID.fullmatch(image_id):
            return None
        path = self.root / "images" / image_id
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return path if age <= ttl_s else None

    def _purge_images(self, ttl_s: int, max_bytes: int) -> None:
        cutoff = time.time() - ttl_s
        kept = []
        for path in (self.root / "images").iterdir():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # another API process purged it
            if stat.st_mtime < cutoff:
                path.unlink(missing_ok=True)
            elif IMAGE_ID.fullmatch(path.name):  # not another process's file being written
                kept.append((stat.st_mtime, path.name, stat.st_size, path))
        total = sum(size for _, _, size, _ in kept)
        for _, _, size, path in sorted(kept):
            if total <= max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
