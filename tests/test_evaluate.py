"""The evaluator: our FID agrees with torch-fidelity and clean-fid; metrics behave; protocol and formats."""
import numpy as np
import pytest
import torch

from harness.errors import DataError
from harness.evaluate.adm import read_adm_npz, write_adm_npz
from harness.evaluate.metrics import (FeatureStats, fd_with_backend, frechet_distance, inception_score,
                                      kernel_inception_distance, precision_recall)
from harness.evaluate.scoring import fid_between, score_samples
from harness.registry import get


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


def test_real_inception_weights_give_pool3_features_and_hash():
    inc = get("extractor", "inception_v3")()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    f = inc.features(x)
    assert f.shape == (2, 2048) and np.isfinite(f).all() and (f >= 0).all()
    assert len(inc.weights_sha256) == 64 and inc.metric_prefix == "fid_inception"
    assert inc.logits(x) is None


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
    from harness.experiment import DatasetCache
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
