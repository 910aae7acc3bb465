"""The metric interface: score a batch of (image, prompt) pairs."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from PIL import Image


class MissingWeightsError(FileNotFoundError):
    """A metric's weights are not where it was told to look; the message says what to get and where."""


# The images a metric scores (and their no-cache references), in prompt order.
Images = Sequence[Image.Image]


@runtime_checkable
class QualityMetric(Protocol):
    """A metric with one score per image.

    `references`, when the metric needs them, are the no-cache images of the same seeds, in the same order.
    Batching and device are fixed by the metric's config, i.e. by the caller that built it.
    """

    name: str
    higher_is_better: bool
    needs_references: bool

    def score(
        self, images: Images, prompts: Sequence[str], references: Images | None = None
    ) -> list[float]: ...


@runtime_checkable
class SetMetric(Protocol):
    """A metric defined only for a set of images as a whole (FID): one number per call."""

    name: str
    higher_is_better: bool
    needs_references: bool

    def score_set(
        self, images: Images, prompts: Sequence[str], references: Images | None = None
    ) -> float: ...


Metric = QualityMetric | SetMetric


def summary_score(
    metric: Metric,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    references: Sequence[Image.Image] | None = None,
) -> float:
    """One number for a set of images: the mean per-image score, or the set score of a set metric.

    A mean PSNR is inf as soon as one image is identical to its reference; that is the honest value.
    """
    if isinstance(metric, SetMetric):
        return metric.score_set(images, prompts, references)
    scores = metric.score(images, prompts, references)
    if not scores:
        raise ValueError(f"{metric.name}: no images to score")
    return math.fsum(scores) / len(scores)


def check_batch(name: str, images: Sequence[Image.Image], prompts: Sequence[str]) -> None:
    """Fail early, naming the metric, when images and prompts do not pair up."""
    if len(prompts) != len(images):
        raise ValueError(f"{name}: {len(images)} images but {len(prompts)} prompts")


def require_references(
    name: str, images: Sequence[Image.Image], references: Sequence[Image.Image] | None
) -> Sequence[Image.Image]:
    """The references of a reference-based metric, one per image, or a ValueError naming the metric."""
    if references is None:
        raise ValueError(f"{name}: needs the no-cache reference images of the same seeds")
    if len(references) != len(images):
        raise ValueError(f"{name}: {len(images)} images but {len(references)} references")
    return references


class BatchedMetric(ABC):
    """A per-image metric whose model scores `batch_size` (image, prompt) pairs per forward."""

    name: str
    higher_is_better = True
    needs_references = False
    batch_size: int

    def score(self, images: Images, prompts: Sequence[str], references: Images | None = None) -> list[float]:
        check_batch(self.name, images, prompts)
        scores: list[float] = []
        for start in range(0, len(images), self.batch_size):
            end = start + self.batch_size
            scores.extend(self.score_batch(images[start:end], prompts[start:end]))
        return scores

    @abstractmethod
    def score_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        """The scores of at most `batch_size` pairs."""
