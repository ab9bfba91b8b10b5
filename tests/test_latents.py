"""Latents end to end: encode images with a real (tiny, random) diffusers AutoencoderKL, train on the latents,
sample, decode, score against an ADM reference batch of real images; and every mismatch is one line.

The VAE is the real library's ``AutoencoderKL``, written by ``save_pretrained`` and read back by
``from_pretrained`` (no SD-VAE can be downloaded here): 3x32x32 images <-> 4x16x16 latents.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.core.errors import ConfigError, DataError
from harness.data.base import build_dataset
from harness.data.fashion_mnist import DEFAULT_ROOT as FMNIST_ROOT
from harness.data.latents import read_meta
from harness.data.vae import VAE, VAEIdentity

pytestmark = pytest.mark.skipif(not (FMNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
                                reason="Debian package dataset-fashion-mnist is not installed")
N_IMAGES, SHARD = 200, 64
FMNIST3 = ["data=fashion_mnist", "data.resolution=32", "data.channels=3"]


def tiny_vae(path: Path, seed: int) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                  norm_num_groups=8, layers_per_block=1, sample_size=32).save_pretrained(path)
    return path


def paths(root: Path) -> list[str]:
    return [f"paths.workdir={root / 'w'}", f"paths.cache={root / 'cache'}", f"tracking.uri=sqlite:///{root}/mlflow.db"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two tiny VAEs (different weights) and 200 Fashion-MNIST images encoded with the first by `harness encode`."""
    root = tmp_path_factory.mktemp("latents")
    vae_a, vae_b = tiny_vae(root / "vae_a", 0), tiny_vae(root / "vae_b", 1)
    shards = root / "shards"
    assert main(["encode", *FMNIST3, f"data.limit={N_IMAGES}", *paths(root), "--vae", str(vae_a), "--out", str(shards),
                 "--shard-size", str(SHARD)]) == 0
    return {"root": root, "vae_a": vae_a, "vae_b": vae_b, "shards": shards}


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    return err


def test_vae_identity_encode_decode_follow_dit_conventions(env, tmp_path):
    a = VAEIdentity.of(env["vae_a"])
    assert (a.scale_factor, a.latent_channels, a.image_channels, a.downsample) == (0.18215, 4, 3, 2)
    shutil.copytree(env["vae_a"], tmp_path / "copy")
    assert VAEIdentity.of(tmp_path / "copy").sha256 == a.sha256 != VAEIdentity.of(env["vae_b"]).sha256
    assert VAEIdentity.of(env["vae_a"], scale_factor=0.5).scale_factor == 0.5

    vae = VAE.load(env["vae_a"])
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        dist = vae.model.encode(images.float() / 127.5 - 1).latent_dist
    mean = vae.encode(images, posterior="mean")
    torch.testing.assert_close(mean, dist.mean * 0.18215)                        # z * scale, DiT's convention
    torch.testing.assert_close(vae.encode(images.float() / 127.5 - 1, posterior="mean"), mean)  # uint8 == [-1, 1]
    sample = vae.encode(images, seed=0, batch_size=2)
    torch.testing.assert_close(sample, vae.encode(images, seed=0, batch_size=5))   # per-item noise: batch-size free
    torch.testing.assert_close(sample[2:], vae.encode(images[2:], seed=0, first_index=2))
    assert not torch.allclose(sample, vae.encode(images, seed=1)) and not torch.allclose(sample, mean)
    decoded = vae.decode(mean)
    with torch.no_grad():
        expected = vae.model.decode(dist.mean).sample.clamp(-1, 1)                # decode divides by the scale first
    assert decoded.shape == (5, 3, 32, 32) and decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, expected)


def test_encode_writes_metadata_and_a_rerun_skips_finished_shards(env, tmp_path, capsys):
    files = sorted(env["shards"].glob("*.npz"))
    assert [p.name for p in files] == [f"shard_{k:05d}.npz" for k in range(4)]
    metas = [read_meta(p) for p in files]
    ident = VAEIdentity.of(env["vae_a"])
    m = metas[0]
    assert m["vae"]["sha256"] == ident.sha256 and m["scale_factor"] == 0.18215 and m["prescaled"]
    assert m["latent_shape"] == [4, 16, 16] and m["dtype"] == "float32" and m["image_shape"] == [3, 32, 32]
    assert m["source"]["node"]["name"] == "fashion_mnist" and len(m["source"]["sha256"]) == 64 and m["total"] == N_IMAGES
    assert m["posterior"] == {"mode": "sample", "seed": 0} and m["num_classes"] == 10
    assert [x["count"] for x in metas] == [64, 64, 64, 8] and len({x["key"] for x in metas}) == 1
    with np.load(files[3]) as z:
        assert z["latents"].shape == (8, 4, 16, 16) and z["labels"].shape == (8,)
        last = z["latents"].copy()

    out = tmp_path / "shards"
    shutil.copytree(env["shards"], out)
    (out / "shard_00003.npz").unlink()
    mtime = (out / "shard_00000.npz").stat().st_mtime_ns
    argv = ["encode", *FMNIST3, f"data.limit={N_IMAGES}", *paths(tmp_path), "--vae", str(env["vae_a"]), "--out", str(out),
            "--shard-size", str(SHARD)]
    capsys.readouterr()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == ["shard_00003.npz"] and len(summary["skipped"]) == 3
    assert (out / "shard_00000.npz").stat().st_mtime_ns == mtime
    with np.load(out / "shard_00003.npz") as z:  # the seeded posterior sample is reproduced exactly
        np.testing.assert_array_equal(z["latents"], last)
    err = one_line_error(capsys, [*argv, "--seed", "1"])
    assert "shard_00000.npz belongs to another encoding" in err


def test_encode_reads_an_image_folder_shard_by_shard_and_checks_channels(env, tmp_path, capsys):
    from PIL import Image

    from harness.config import load
    from harness.data.encode import encode_to_shards

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    cfg = load(["data=image_folder", f"data.root={tmp_path / 'imgs'}", *paths(tmp_path)])
    summary = encode_to_shards(cfg["data"], VAE.load(env["vae_a"]), tmp_path / "out", shard_size=4, posterior="mean")
    assert summary["written"] == ["shard_00000.npz", "shard_00001.npz"] and summary["image_shape"] == [3, 32, 32]
    ds = build_dataset({"name": "latent_shards", "root": str(tmp_path / "out")})
    assert ds.num_classes == 2 and ds.y.tolist() == [0, 0, 0, 1, 1, 1] and ds.shape == (4, 16, 16)
    assert ds.info["encoding"]["posterior"]["mode"] == "mean"
    err = one_line_error(capsys, ["encode", "data=fashion_mnist", "data.resolution=32", "data.limit=4", *paths(tmp_path),
                                  "--vae", str(env["vae_a"]), "--out", str(tmp_path / "grey")])
    assert "images have 1 channel(s) but the VAE" in err and "data.channels=3" in err


def test_latent_shards_are_lazy_and_carry_their_decoder(env):
    from harness.data.shapes import data_shape

    ds = build_dataset({"name": "latent_shards", "root": str(env["shards"])})
    assert ds.kind == "latent" and ds.is_lazy and len(ds) == N_IMAGES and ds.shape == (4, 16, 16)
    assert ds.num_classes == 10 and ds.image_shape == (3, 32, 32)      # from the metadata, not ImageNet's nominal 1000
    x, y = ds.get_batch(torch.tensor([70, 3]))
    with np.load(env["shards"] / "shard_00001.npz") as z:
        torch.testing.assert_close(x[0], torch.from_numpy(z["latents"][70 - SHARD]))
    head = ds.head(50)
    assert head.is_lazy and ds.is_lazy and len(head) == 50               # reading rows never materialises the shards
    images = ds.decoder(x)
    assert images.shape == (2, 3, 32, 32) and -1 <= images.min() and images.max() <= 1
    assert ds.decoder.identity()["decoder_sha256"] == VAEIdentity.of(env["vae_a"]).sha256
    assert data_shape({"name": "latent_shards", "root": str(env["shards"])}) == ((4, 16, 16), 10, "shard metadata")


def test_wrong_vae_dtype_shape_mixed_or_missing_shards_are_one_line_errors(env, tmp_path):
    from harness.data.encode import encode_to_shards

    root = str(env["shards"])
    with pytest.raises(ConfigError, match=r"data\.vae: .*vae_b has SHA-256 \w+ but .*shard_00000\.npz was encoded with VAE") as e:
        build_dataset({"name": "latent_shards", "root": root, "vae": str(env["vae_b"])})
    assert "\n" not in e.value.one_line()
    build_dataset({"name": "latent_shards", "root": root, "vae": str(env["vae_a"])})  # the right one is accepted
    with pytest.raises(ConfigError, match=r"data\.scale_factor=0\.5 but .* encoded with scale 0\.18215"):
        build_dataset({"name": "latent_shards", "root": root, "scale_factor": 0.5})

    def rewritten(name: str, change) -> Path:
        d = tmp_path / name
        shutil.copytree(env["shards"], d)
        with np.load(d / "shard_00002.npz") as z:
            arrays = dict(z)
        arrays["latents"] = change(arrays["latents"])
        np.savez(d / "shard_00002.npz", **arrays)
        return d

    for name, change, said in (("dtype", lambda a: a.astype(np.float16), r"float16 \(4, 16, 16\) x 64 but its metadata says float32"),
                               ("shape", lambda a: a[:, :, :8], r"float32 \(4, 8, 16\) x 64 but its metadata says float32 \(4, 16, 16\)")):
        with pytest.raises(DataError, match=f"shard_00002.npz: latents are {said}"):
            build_dataset({"name": "latent_shards", "root": str(rewritten(name, change))})

    other = encode_to_shards({"name": "fashion_mnist", "limit": 8, "resolution": 32, "channels": 3},
                             VAE.load(env["vae_b"]), tmp_path / "other", shard_size=8)
    mixed = tmp_path / "mixed"
    shutil.copytree(env["shards"], mixed)
    shutil.copy(tmp_path / "other" / other["written"][0], mixed / "shard_99999.npz")
    with pytest.raises(DataError, match=r"shard_99999\.npz: encoded with VAE \w+ \(.*vae_b\) but shard_00000\.npz with VAE"):
        build_dataset({"name": "latent_shards", "root": str(mixed)})
    (mixed / "shard_99999.npz").unlink()
    (mixed / "shard_00001.npz").unlink()
    with pytest.raises(DataError, match=r"3 shard file\(s\) for 4 shards of one encoding \(shard 1 is missing\)"):
        build_dataset({"name": "latent_shards", "root": str(mixed)})


def fmnist_reference(path: Path, n: int, size: int = 32) -> Path:
    """An ADM reference batch of real images: Fashion-MNIST test images as 3 x size x size uint8 NHWC."""
    from harness.evaluate.adm import write_adm_npz
    from harness.sample import to_uint8

    ds = build_dataset({"name": "fashion_mnist", "split": "test", "limit": n, "resolution": size, "channels": 3})
    return write_adm_npz(path, to_uint8(ds.x).permute(0, 2, 3, 1).numpy())


def test_train_sample_decode_and_score_latents_against_an_adm_reference(env, tmp_path, capsys):
    ref = fmnist_reference(tmp_path / "ref.npz", 64)
    cfg = ["data=imagenet256_latents", f"data.root={env['shards']}", "backbone=dit_tiny", "backbone.depth=1",
           "backbone.hidden_size=32", "backbone.num_heads=2", "train.steps=3", "train.checkpoint_every=3",
           "train.batch_size=16", "sampler.steps=2", "eval=fd_smallcnn", "eval.metrics=[fd]", "eval.n_samples=16",
           "eval.batch_size=16", f"eval.reference={ref}", "run.progress=false", *paths(tmp_path)]
    capsys.readouterr()
    assert main(["run", *cfg, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    protocol = result["protocol"]
    assert protocol["decoder_sha256"] == VAEIdentity.of(env["vae_a"]).sha256   # scored images were decoded by the VAE
    assert protocol["metric_image_shape"] == "3x32x32" and protocol["reference"].startswith(f"adm-npz:{ref}")
    fd = result["metrics"]["fd_smallcnn_16"]
    assert np.isfinite(fd) and fd > 0

    assert main(["sample", *cfg, "--out", str(tmp_path / "s.npz")]) == 0   # the trained unit is reused
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (16, 32, 32, 3) and z["arr_1"].shape == (16,)
    capsys.readouterr()
    assert main(["eval", *cfg, "--samples", str(tmp_path / "s.npz")]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert abs(scored["metrics"]["fd_smallcnn_16"] - fd) < 1e-6    # the npz holds exactly the images the run scored


def test_latent_metrics_need_an_adm_reference_at_the_decoded_resolution(env, tmp_path, capsys):
    from harness.evaluate.adm import write_adm_npz

    samples = write_adm_npz(tmp_path / "s.npz", np.zeros((4, 32, 32, 3), dtype=np.uint8))
    base = ["eval", "data=imagenet256_latents", f"data.root={env['shards']}", "eval=fd_smallcnn", "eval.metrics=[fd]",
            *paths(tmp_path)]
    err = one_line_error(capsys, [*base, "--samples", str(samples)])
    assert "eval.reference: metrics on decoded latents need an ADM reference batch" in err
    small = fmnist_reference(tmp_path / "ref16.npz", 8, size=16)
    err = one_line_error(capsys, [*base, f"eval.reference={small}", "--samples", str(samples)])
    assert f"{small}: reference images are 16x16 but the decoded samples are 32x32" in err
