"""FID: the Fréchet distance on known answers, and the whole metric on a random-weight Inception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from ecad.metrics import MissingWeightsError, get_metric, summary_score
from ecad.metrics.fid import FidConfig, FidMetric, FidStatistics, frechet_distance
from ecad.metrics.inception import FEATURE_DIM, FidInceptionV3


def stats(mu: list[float], sigma: list[list[float]]) -> FidStatistics:
    return FidStatistics(mu=np.array(mu, dtype=np.float64), sigma=np.array(sigma, dtype=np.float64))


def test_identical_statistics_are_at_distance_zero() -> None:
    features = np.random.default_rng(0).normal(size=(200, 8))
    a = FidStatistics.from_features(features)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)


def test_one_dimensional_gaussians() -> None:
    # N(0, 1) vs N(3, 4): 3² + 1 + 4 − 2·√(1·4) = 10.
    assert frechet_distance(stats([0.0], [[1.0]]), stats([3.0], [[4.0]])) == pytest.approx(10.0, abs=1e-12)


def test_diagonal_covariances_have_the_closed_form() -> None:
    # For diagonal Σ the distance is ‖Δμ‖² + Σᵢ (√aᵢ − √bᵢ)².
    a = stats([1.0, 2.0, 0.0], np.diag([1.0, 9.0, 0.25]).tolist())
    b = stats([0.0, 2.0, 1.0], np.diag([4.0, 1.0, 0.25]).tolist())
    assert frechet_distance(a, b) == pytest.approx(2 + 1 + 4 + 0, abs=1e-12)


def test_agrees_with_scipy_sqrtm_on_full_covariances() -> None:
    rng = np.random.default_rng(1)
    a = FidStatistics.from_features(rng.normal(size=(50, 6)))
    b = FidStatistics.from_features(rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 0.3)
    diff = a.mu - b.mu
    reference = diff @ diff + np.trace(a.sigma + b.sigma) - 2 * np.trace(linalg.sqrtm(a.sigma @ b.sigma).real)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-9)


def test_statistics_round_trip_through_npz(tmp_path: Path) -> None:
    original = FidStatistics.from_features(np.random.default_rng(2).normal(size=(10, 4)))
    original.save(tmp_path / "ref.npz")
    loaded = FidStatistics.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mu, original.mu)
    np.testing.assert_array_equal(loaded.sigma, original.sigma)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz"]  # no temp file left behind


def test_missing_inception_weights_say_what_to_download(tmp_path: Path) -> None:
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(MissingWeightsError) as error:
        get_metric("fid", inception_weights=weights, reference=tmp_path)
    assert str(error.value) == (
        f"fid: missing Inception weights {weights}. Download https://github.com/mseitzer/pytorch-fid/"
        "releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth and pass its path as "
        "inception_weights."
    )
    with pytest.raises(MissingWeightsError, match=r"^fid: no inception_weights given\. Download https://"):
        get_metric("fid", reference=tmp_path)


def random_inception_weights(path: Path) -> Path:
    """A state dict in pytorch-fid's layout (with its 1008-class fc, without BatchNorm counters).

    He-normal convolutions keep activations O(1) through the 94 layers, so features are not ~0.
    """
    torch.manual_seed(0)
    model = FidInceptionV3()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.zeros(1008, FEATURE_DIM)
    state["fc.bias"] = torch.zeros(1008)
    torch.save(state, path)
    return path


def test_inception_checkpoint_with_unknown_keys_is_refused(tmp_path: Path) -> None:
    weights = random_inception_weights(tmp_path / "inception.pth")
    state = torch.load(weights, weights_only=True)
    state["AuxLogits.fc.weight"] = torch.zeros(1)
    del state["Mixed_7c.branch_pool.bn.bias"]
    torch.save(state, weights)
    with pytest.raises(ValueError, match="keys differ") as error:
        get_metric("fid", inception_weights=weights, reference=tmp_path)
    assert str(error.value).endswith(
        "keys differ from FID Inception: missing ['Mixed_7c.branch_pool.bn.bias'], "
        "unexpected ['AuxLogits.fc.weight']"
    )


def noise_images(seed: int, count: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)) for _ in range(count)]


def test_fid_against_a_folder_or_its_saved_statistics(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    for i, image in enumerate(noise_images(seed=3, count=3)):
        image.save(reference / f"{i}.png")
    weights = random_inception_weights(tmp_path / "inception.pth")
    from_folder = FidMetric(FidConfig(inception_weights=weights, reference=reference, batch_size=2))
    scale = float(np.trace(from_folder.reference.sigma))
    assert scale > 0.01  # the random Inception gives non-trivial features

    # The reference images themselves: same statistics, distance 0 up to rounding. Three samples give a
    # rank-2 covariance, and the ~2046 zero eigenvalues each add √(rounding) noise, hence 1e-4.
    same = summary_score(from_folder, noise_images(seed=3, count=3), ["", "", ""])
    assert abs(same) <= 1e-4 * scale

    from_folder.reference.save(tmp_path / "ref.npz")
    from_npz = get_metric("fid", inception_weights=weights, reference=tmp_path / "ref.npz")
    np.testing.assert_array_equal(from_npz.reference.sigma, from_folder.reference.sigma)
    assert from_npz.score_set(noise_images(seed=4, count=3), ["", "", ""]) > 0.1 * scale
