"""Every evaluated candidate, keyed by its bits: none is evaluated twice; the front uses all generations."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    digest TEXT PRIMARY KEY,
    bits BLOB NOT NULL,
    quality REAL NOT NULL,
    tmacs REAL NOT NULL,
    latency_ms REAL,
    generation INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class ArchivedCandidate:
    digest: str
    bits: np.ndarray
    quality: float
    tmacs: float
    latency_ms: float | None
    generation: int


class Archive:
    """A SQLite file; each `add` commits, so a kill loses nothing already evaluated."""

    def __init__(self, path: Path, n_bits: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.n_bits = n_bits
        self.connection = sqlite3.connect(path)
        self.connection.execute(_SCHEMA)
        self.connection.commit()

    def close(self) -> None:
        self.connection.close()

    def get(self, digest: str) -> ArchivedCandidate | None:
        row = self.connection.execute("SELECT * FROM evaluations WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else self._candidate(row)

    def add(self, candidate: ArchivedCandidate) -> None:
        packed = np.packbits(candidate.bits.astype(bool)).tobytes()
        with self.connection:
            self.connection.execute(
                "INSERT OR IGNORE INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                (
                    candidate.digest,
                    packed,
                    candidate.quality,
                    candidate.tmacs,
                    candidate.latency_ms,
                    candidate.generation,
                ),
            )

    def all(self) -> list[ArchivedCandidate]:
        rows = self.connection.execute("SELECT * FROM evaluations ORDER BY generation, digest").fetchall()
        return [self._candidate(row) for row in rows]

    def __len__(self) -> int:
        return int(self.connection.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])

    def _candidate(self, row: tuple) -> ArchivedCandidate:
        digest, packed, quality, tmacs, latency, generation = row
        bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))[: self.n_bits].astype(bool)
        return ArchivedCandidate(digest, bits, quality, tmacs, latency, generation)
