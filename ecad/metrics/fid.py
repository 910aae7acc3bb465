"""FID of a set of generated images against a reference image folder or precomputed statistics.

clean-fid and torch-fidelity both require torchvision, which cannot be installed beside transformers
here, so the pieces are our own: pytorch-fid's Inception weights in `inception.py`, clean-fid's
"clean" resize (PIL bicubic on float pixels, no re-quantisation), and the Fréchet distance
(see frechet_distance for why it avoids sqrtm). Statistics files are .npz with `mu` and `sigma`,
the format of pytorch-fid and clean-fid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ecad.files import atomic_write
from ecad.metrics.base import Images, MissingWeightsError
from ecad.metrics.images import iter_image_folder
from ecad.metrics.inception import FEATURE_DIM, INPUT_SIZE, FidInceptionV3

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_WEIGHTS_FILE}"
)
# The weights file carries the 1008-class ImageNet classifier, which FID does not use.
IGNORED_PREFIX = "fc."


@dataclass(frozen=True)
class FidStatistics:
    """Mean and covariance of Inception pool3 features."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray) -> FidStatistics:
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"FID statistics need at least 2 feature rows, got shape {features.shape}")
        features = features.astype(np.float64)
        return cls(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False))

    @classmethod
    def load(cls, path: Path) -> FidStatistics:
        with np.load(path) as data:
            missing = {"mu", "sigma"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: FID statistics lack {sorted(missing)}")
            return cls(mu=data["mu"].astype(np.float64), sigma=data["sigma"].astype(np.float64))

    def save(self, path: Path) -> None:
        with atomic_write(path) as handle:
            np.savez(handle, mu=self.mu, sigma=self.sigma)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def frechet_distance(a: FidStatistics, b: FidStatistics) -> float:
    """‖μa − μb‖² + Tr(Σa) + Tr(Σb) − 2·Tr((Σa·Σb)^½), the Fréchet distance between two Gaussians.

    Tr((Σa·Σb)^½) is computed as Σ √λ over the eigenvalues λ of the symmetric Σa^½·Σb·Σa^½, which has
    the same spectrum as Σa·Σb. That equals the trace of scipy's sqrtm(Σa·Σb) as pytorch-fid and
    clean-fid compute it, but takes two symmetric eigendecompositions (2.5 s for 2048² on the 2-core
    dev VM, where sqrtm took 11 s) and stays real and finite for the singular covariances of small
    sample sets, with no ridge to add.
    """
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"FID statistics differ in shape: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu - b.mu
    root_a = _psd_sqrt(a.sigma)
    product_eigenvalues = np.linalg.eigvalsh(root_a @ b.sigma @ root_a)
    trace_covmean = float(np.sqrt(np.clip(product_eigenvalues, 0, None)).sum())
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_covmean)


def clean_resize(image: Image.Image) -> np.ndarray:
    """[299, 299, 3] float32 in 0..255: clean-fid's "clean" mode, bicubic per channel on floats."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    size = (INPUT_SIZE, INPUT_SIZE)
    channels = [
        np.asarray(Image.fromarray(pixels[:, :, c], mode="F").resize(size, Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


def load_inception(weights: Path) -> FidInceptionV3:
    """pytorch-fid's weights, key sets compared explicitly (the classifier is the only thing dropped)."""
    if not weights.is_file():
        raise MissingWeightsError(
            f"fid: missing Inception weights {weights}. Download {INCEPTION_WEIGHTS_URL} "
            f"and pass its path as inception_weights."
        )
    model = FidInceptionV3()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    own = model.state_dict()
    # Old BatchNorm checkpoints have no num_batches_tracked counters; they do not affect eval.
    counters = {k for k in own if k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIX) and k not in counters}
    missing = sorted(set(own) - counters - set(given))
    unexpected = sorted(set(given) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{weights}: keys differ from FID Inception: missing {missing}, unexpected {unexpected}"
        )
    model.load_state_dict({**{k: own[k] for k in counters}, **given}, strict=True)
    return model.eval()


def _batches(items: Iterable[Image.Image], size: int) -> Iterator[list[Image.Image]]:
    batch: list[Image.Image] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class InceptionFeatures:
    """Images → [N, 2048] pool3 features, in batches on one device."""

    def __init__(self, model: FidInceptionV3, device: str = "cpu", batch_size: int = 32) -> None:
        self.model = model.to(device)
        self.device = device
        self.batch_size = batch_size

    def __call__(self, images: Iterable[Image.Image]) -> np.ndarray:
        chunks = []
        for batch in _batches(images, self.batch_size):
            pixels = torch.from_numpy(np.stack([clean_resize(image) for image in batch]))
            # 0..255 → −1..1, pytorch-fid's input range for these weights.
            pixels = pixels.permute(0, 3, 1, 2).to(self.device) / 255.0 * 2 - 1
            with torch.inference_mode():
                chunks.append(self.model(pixels).double().cpu().numpy())
        if not chunks:
            return np.zeros((0, FEATURE_DIM))
        return np.concatenate(chunks)


@dataclass
class FidConfig:
    """`reference`: a folder of images or a .npz of mu/sigma; `inception_weights`: pytorch-fid's .pth."""

    inception_weights: Path | str | None = None
    reference: Path | str | None = None
    device: str = "cpu"
    batch_size: int = 32


def reference_statistics(reference: Path, features: InceptionFeatures) -> FidStatistics:
    if reference.is_dir():
        return FidStatistics.from_features(features(iter_image_folder(reference)))
    if reference.suffix == ".npz" and reference.is_file():
        return FidStatistics.load(reference)
    raise FileNotFoundError(f"fid: reference {reference} is neither an image folder nor a .npz of statistics")


class FidMetric:
    """FID of a whole set of images against the reference statistics; lower is better, 0 = same statistics."""

    name = "fid"
    higher_is_better = False
    needs_references = False

    def __init__(self, config: FidConfig) -> None:
        if config.inception_weights is None:
            raise MissingWeightsError(
                f"fid: no inception_weights given. Download {INCEPTION_WEIGHTS_URL} "
                f"and pass its path as inception_weights."
            )
        if config.reference is None:
            raise ValueError("fid: no reference given (an image folder or a .npz with mu and sigma)")
        model = load_inception(Path(config.inception_weights).expanduser())
        self.features = InceptionFeatures(model, config.device, config.batch_size)
        self.reference = reference_statistics(Path(config.reference).expanduser(), self.features)

    def score_set(self, images: Images, prompts: Sequence[str], references: Images | None = None) -> float:
        return frechet_distance(FidStatistics.from_features(self.features(images)), self.reference)
