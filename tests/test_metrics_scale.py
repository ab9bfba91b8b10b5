"""Evaluation at 50K samples in bounded memory (issue 14, item 5): the chunked, streaming and device-aware paths
give the numbers of the dense, one-shot and default ones they replace.  ``benchmarks/pr_memory.py`` and
``benchmarks/eval_throughput.py`` measure memory and speed; these tests only check equality."""
import warnings

import numpy as np
import pytest
import torch

from harness.core.errors import DataError
from harness.core.registry import get
from harness.evaluate.metrics import (FeatureStats, StreamingStats, _knn_sq_radii, kernel_inception_distance,
                                      precision_recall)
from harness.evaluate.scoring import score_features, score_samples


def dense_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """The n x n float64 implementation this package used before chunking, kept here as the reference."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)

    def sq(a, b):
        return np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T, 0)

    def radii(f):
        return np.sqrt(np.partition(sq(f, f), k, axis=1)[:, k])   # index 0 is the point itself

    r_real, r_fake = radii(real), radii(fake)
    d = np.sqrt(sq(fake, real))                                    # (n_fake, n_real)
    return float((d <= r_real[None]).any(1).mean()), float((d.T <= r_fake[None]).any(1).mean())


def features(n, d, seed, shift=0.0, scale=1.0, offset=0.0):
    """Correlated Gaussian features; ``offset`` adds a large common mean, as Inception's non-negative pool3 has."""
    a = np.random.RandomState(100).randn(d, d) / np.sqrt(d)
    return (np.random.RandomState(seed).randn(n, d) @ a) * scale + shift + offset


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [37, 128, 4096])
def test_chunked_precision_recall_equals_the_dense_float64_one(seed, batch):
    """Counts, not just fractions, agree: batch 37 leaves ragged blocks in both loops, 4096 is one block."""
    real = features(500, 64, seed=10 + seed, offset=5.0)
    fake = features(430, 64, seed=20 + seed, shift=0.2, offset=5.0)
    dense = dense_precision_recall(real, fake)
    assert 0.05 < dense[0] < 0.95 and 0.05 < dense[1] < 0.95, dense   # neither trivially 0 nor 1
    assert precision_recall(real, fake, batch=batch) == dense
    assert precision_recall(real, fake, 5, device="cpu", batch=batch) == dense_precision_recall(real, fake, 5)


def test_chunked_knn_radii_are_the_kth_neighbour_distances():
    x = features(300, 16, seed=3)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    for k in (1, 3, 7):
        want = np.sort(d2, axis=1)[:, k]
        for batch in (5, 64, 300):
            got = _knn_sq_radii(torch.from_numpy(x).float(), k, batch).double().numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_precision_recall_accepts_tensors_and_too_few_points_is_a_clear_error():
    real, fake = features(200, 8, seed=4), features(150, 8, seed=5, shift=0.3)
    assert precision_recall(torch.from_numpy(real), torch.from_numpy(fake).float()) == dense_precision_recall(real, fake)
    with pytest.raises(DataError, match="k=3 needs more than 3 fake feature vectors, got 3"):
        precision_recall(real, fake[:3])


def test_kid_in_torch_equals_the_numpy_formula_and_keeps_subsets():
    """The previous NumPy implementation, inlined: same RandomState subsets, same numbers to float64 rounding."""
    f1, f2 = features(400, 32, seed=6), features(350, 32, seed=7, shift=0.2)
    rng, vals = np.random.RandomState(5), []
    for _ in range(7):
        x, y = f1[rng.choice(400, 300, replace=False)], f2[rng.choice(350, 300, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / 32 + 1) ** 3, (y @ y.T / 32 + 1) ** 3, (x @ y.T / 32 + 1) ** 3)
        vals.append((kxx.sum() - np.trace(kxx)) / (300 * 299) + (kyy.sum() - np.trace(kyy)) / (300 * 299) - 2 * kxy.mean())
    want = (np.mean(vals), np.std(vals))
    assert kernel_inception_distance(f1, f2, num_subsets=7, subset_size=300, seed=5) == pytest.approx(want, rel=1e-10)
    got = kernel_inception_distance(torch.from_numpy(f1), torch.from_numpy(f2), 7, 300, 5, device="cpu")
    assert got == pytest.approx(want, rel=1e-10)


def test_streaming_stats_equal_batch_stats():
    f = features(1000, 24, seed=8, offset=1e3)   # a large common mean: the naive sum of squares would cancel
    whole = FeatureStats.from_features(f)
    s = StreamingStats()
    for i in range(0, 1000, 97):
        s.update(f[i:i + 97] if i % 2 else torch.from_numpy(f[i:i + 97]))   # NumPy and torch batches
    got = s.finalize()
    assert got.n == 1000
    np.testing.assert_allclose(got.mu, whole.mu, rtol=1e-12)
    np.testing.assert_allclose(got.sigma, whole.sigma, rtol=1e-9, atol=1e-9 * np.abs(whole.sigma).max())
    a, b = StreamingStats().update(f[:300]), StreamingStats().update(f[300:])
    merged = a.merge(b).finalize()
    np.testing.assert_allclose(merged.mu, whole.mu, rtol=1e-12)
    np.testing.assert_allclose(merged.sigma, whole.sigma, rtol=1e-9, atol=1e-9 * np.abs(whole.sigma).max())
    first = FeatureStats.from_features(f[:300])   # merging into an empty accumulator copies the other one
    np.testing.assert_allclose(StreamingStats().merge(StreamingStats().update(f[:300])).finalize().sigma, first.sigma,
                               rtol=1e-9, atol=1e-9 * np.abs(first.sigma).max())
    with pytest.raises(DataError, match="at least 2 feature vectors"):
        StreamingStats().update(f[:1]).finalize()


def test_score_features_equals_score_samples():
    ext = get("extractor", "smallcnn")()
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 256, (40, 3, 32, 32), generator=g, dtype=torch.uint8)
    ref = ext.features(torch.randint(0, 256, (60, 3, 32, 32), generator=g, dtype=torch.uint8))
    kw = dict(reference=None, reference_features=ref, extractor=ext, metrics=("fd", "kid", "pr", "is", "div"), seed=2)
    whole = score_samples(x, **kw)
    assert score_features(ext.features(x), images=x, **kw) == whole
    assert set(whole["metrics"]) == {"fd_smallcnn_40", "kid_smallcnn_40", "kid_std_smallcnn_40", "precision_smallcnn_40",
                                     "recall_smallcnn_40", "is_smallcnn_40", "div_smallcnn_40"}
    no_is = dict(kw, metrics=("fd", "kid", "pr", "div"))
    without_is = {k: v for k, v in whole["metrics"].items() if not k.startswith("is_")}
    assert score_features(ext.features(x), **no_is)["metrics"] == without_is
    with pytest.raises(DataError, match="Inception Score needs the images"):
        score_features(ext.features(x), **kw)
    with pytest.raises(DataError, match="LPIPS needs the images"):
        score_features(ext.features(x), **dict(kw, metrics=("lpips",)))


def test_smallcnn_on_an_explicit_device_and_any_batch_size_gives_the_default_features():
    x = torch.randint(0, 256, (23, 1, 28, 28), generator=torch.Generator().manual_seed(12), dtype=torch.uint8)
    default = get("extractor", "smallcnn")()
    with torch.no_grad():
        direct = default._embed(x).double().numpy()                 # the whole set in one forward
    for ext in (default, get("extractor", "smallcnn")(device="cpu", batch_size=5)):
        assert ext.device == torch.device("cpu") and ext.weights_sha256 == default.weights_sha256
        f = ext.features(x)
        assert f.dtype == np.float64 and f.shape == (23, 128)
        np.testing.assert_allclose(f, direct, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ext.logits(x), default.head(torch.from_numpy(direct).float()).double().detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert np.array_equal(get("extractor", "smallcnn")(device="cpu").features(x), default.features(x))


def test_inception_on_an_explicit_device_and_in_batches_gives_the_one_shot_features():
    """The previous one-call path (float, bilinear 299, (x - 128) / 128, the TorchScript net) on the whole set."""
    import torch.nn.functional as F

    default = get("extractor", "inception_v3")()
    x = torch.randint(0, 256, (3, 3, 16, 16), generator=torch.Generator().manual_seed(13), dtype=torch.uint8)
    with torch.no_grad():
        want = default.net((F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False) - 128) / 128)
    want = want.reshape(3, -1).double().numpy()
    on_cpu = get("extractor", "inception_v3")(device="cpu", batch_size=2)
    assert on_cpu.device == "cpu" and on_cpu.weights_sha256 == default.weights_sha256
    for f in (default.features(x), on_cpu.features(x)):
        assert f.shape == (3, 2048) and f.dtype == np.float64
        np.testing.assert_allclose(f, want, rtol=1e-4, atol=1e-5)


def test_dinov2_in_batches_on_an_explicit_device_gives_the_one_shot_features(tmp_path):
    """A small traced stand-in network in DINOv2's file format (real weights cannot be downloaded here)."""
    import torch.nn.functional as F

    from harness.evaluate.dinov2 import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    path = tmp_path / "dinov2_standin.pt"
    with warnings.catch_warnings():               # TorchScript is deprecated, but it is the format DINOv2 files come in
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(net).save(str(path))
    x = torch.randint(0, 256, (7, 3, 20, 20), generator=torch.Generator().manual_seed(14), dtype=torch.uint8)
    with torch.no_grad():
        y = F.interpolate(x.float() / 255, size=(32, 32), mode="bicubic", align_corners=False)
        want = net((y - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    want = want.double().numpy()
    for kw in ({}, {"device": "cpu", "batch_size": 3}):
        f = get("extractor", "dinov2")(path=str(path), resolution=32, **kw).features(x)
        assert f.shape == (7, 8) and f.dtype == np.float64
        np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-6)
