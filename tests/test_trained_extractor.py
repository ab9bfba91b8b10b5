"""The trained small-CNN extractor (eval=fd_cnn_fmnist's mechanism), on scikit-learn digits for speed."""
import json
from pathlib import Path

import pytest
import torch

from harness.config.compose import compose
from harness.data.base import build_dataset
from harness.evaluate.feature_extractors import SmallCNN
from harness.evaluate.metrics import FeatureStats, frechet_distance as frechet
from harness.evaluate.pipeline import build_extractor


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images(split):
    ds = build_dataset({"name": "digits", "split": split})
    x, y = ds.get_batch(torch.arange(len(ds)))
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), y


def test_trained_cnn_classifies_and_separates_real_from_blurred(cache):
    torch.manual_seed(0)
    net = SmallCNN(train_on="digits", epochs=20, resolution=16, batch_size=64)
    assert net.metric_prefix == "fd_cnn_digits"
    acc = float(net.weights_source.rsplit("test_acc=", 1)[1])
    assert acc > 0.8, net.weights_source      # an untrained net is at chance (~0.1)
    untrained = SmallCNN(resolution=16)
    assert untrained.weights_sha256 != net.weights_sha256 and untrained.metric_prefix == "fd_smallcnn"

    real, _ = _images("test")
    train, _ = _images("train")
    blurred = torch.nn.functional.avg_pool2d(real.float(), 3, 1, 1).round().to(torch.uint8)

    def fd(extractor, a, b):
        fa, fb = FeatureStats.from_features(extractor.features(a)), FeatureStats.from_features(extractor.features(b))
        return frechet(fa.mu, fa.sigma, fb.mu, fb.sigma)

    # relative to the real-vs-real floor, the trained features see the blur much more clearly than random ones
    trained_ratio = fd(net, blurred, train) / fd(net, real, train)
    random_ratio = fd(untrained, blurred, train) / fd(untrained, real, train)
    assert trained_ratio > 1.5 * random_ratio, (trained_ratio, random_ratio)


def test_trained_cnn_is_cached_by_content_and_reloaded_without_training(cache):
    first = SmallCNN(train_on="digits", epochs=2, resolution=8, batch_size=64)
    files = list((cache / "extractors").glob("smallcnn-digits-*.pt"))
    assert len(files) == 1
    written = files[0].stat().st_mtime_ns
    again = SmallCNN(train_on="digits", epochs=2, resolution=8, batch_size=64)
    assert files[0].stat().st_mtime_ns == written                   # loaded, not trained and saved again
    assert again.weights_sha256 == first.weights_sha256 and again.weights_source == first.weights_source
    other = SmallCNN(train_on="digits", epochs=3, resolution=8, batch_size=64)
    assert other.weights_sha256 != first.weights_sha256
    assert len(list((cache / "extractors").glob("smallcnn-digits-*.pt"))) == 2


def test_trained_weights_do_not_depend_on_the_callers_thread_count(tmp_path, monkeypatch):
    """The classifier trains on one thread whatever torch.get_num_threads() is, and restores the caller's setting."""
    before = torch.get_num_threads()
    shas = []
    try:
        for threads in (1, 2):
            monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / f"cache{threads}"))
            torch.set_num_threads(threads)
            shas.append(SmallCNN(train_on="digits", epochs=2, resolution=16, batch_size=32).weights_sha256)
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert shas[0] == shas[1]


# Reports whose cells were all scored under eval=fd_cnn_fmnist's classifier as shipped. moe_fmnist is not one: its
# cells were scored in a session whose CPU trained other weights from the same seed (2aa919..), before they shipped.
RESUMABLE_REPORTS = ("cbs_fmnist", "cbs_fmnist_perturb", "ddm_fmnist", "ddm_init_fmnist", "guidance_fmnist")


def test_the_shipped_fashion_mnist_classifier_is_what_the_committed_reports_were_scored_with(cache):
    """A results file resumed on a fresh machine must score its new cells under the same extractor as its old ones.

    Trained here, the weights would depend on this CPU's kernels; loaded from the package they do not, and
    nothing is trained (the cache stays empty).
    """
    cfg = compose(["eval=fd_cnn_fmnist"])
    net = build_extractor(cfg)
    assert net.metric_prefix == "fd_cnn_fashion_mnist"
    assert not (cache / "extractors").exists()               # loaded from the package, not trained
    root = Path(__file__).resolve().parents[1] / "results" / "cells"
    for name in RESUMABLE_REPORTS:
        cells = json.loads((root / f"{name}.json").read_text())["cells"]
        assert cells and {c["protocol"]["weights_sha256"] for c in cells.values()} == {net.weights_sha256}, name
        assert {c["protocol"]["weights_source"] for c in cells.values()} == {net.weights_source}, name
