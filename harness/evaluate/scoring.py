"""Score a sample set against reference features, with metric names and a protocol that say what they are.

Metric keys are ``<prefix>_<n>`` with the extractor's prefix (``fid_inception`` only for
Inception-V3, ``fd_smallcnn``, ``fd_raw``) and the sample count (``256``, ``2k``, ``50k``): e.g.
``fid_inception_50k``, ``kid_smallcnn_2k``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from harness.core.errors import DataError
from harness.evaluate.metrics import (FeatureStats, fd_from_stats, n_label, frechet_distance, inception_score, kernel_inception_distance,
                                      precision_recall)


def score_samples(samples: torch.Tensor, *, reference: Optional[FeatureStats], reference_features: Optional[np.ndarray],
                  extractor, metrics: Sequence[str] = ("fd", "kid", "pr"), seed: int = 0,
                  fd_backend: str = "harness", lpips_backbone: Optional[str] = None,
                  pairs: int = 2000) -> dict[str, Any]:
    """{'metrics': {...}, 'protocol': {...}} of ``samples`` (uint8 images or raw vectors): their features, scored."""
    return score_features(extractor.features(samples), images=samples, reference=reference,
                          reference_features=reference_features, extractor=extractor, metrics=metrics, seed=seed,
                          fd_backend=fd_backend, lpips_backbone=lpips_backbone, pairs=pairs)


def score_features(feats: np.ndarray, *, images: Optional[torch.Tensor] = None, reference: Optional[FeatureStats],
                   reference_features: Optional[np.ndarray], extractor, metrics: Sequence[str] = ("fd", "kid", "pr"),
                   seed: int = 0, fd_backend: str = "harness", lpips_backbone: Optional[str] = None,
                   pairs: int = 2000, device: Optional[str] = None) -> dict[str, Any]:
    """{'metrics': {...}, 'protocol': {...}} of features ``extractor`` already extracted (N, F), e.g. batch by batch.

    ``images`` (the samples the features came from) are needed only by ``is`` (the extractor's
    classifier logits) and ``lpips``.  KID and precision/recall run on ``device``, by default the
    extractor's (CPU for extractors without one).
    Diversity (seed 003, Tab. 3): ``lpips`` is the mean pairwise LPIPS-Alex (``lpips_div_<n>``) and
    needs ``lpips_backbone``; ``div`` is the mean pairwise cosine distance of the extractor's
    features (``div_<family>_<n>``), a stand-in that is never called LPIPS.
    """
    device = device if device is not None else getattr(extractor, "device", None)
    if getattr(extractor, "suite", None) == "adm":   # the ADM evaluator's arithmetic (harness/evaluate/adm_suite.py)
        return _score_adm(feats, reference, reference_features, extractor, metrics, device)
    ref_stats = reference if reference is not None else FeatureStats.from_features(reference_features)
    n = n_label(len(feats))
    family = extractor.metric_prefix.split("_", 1)[1] if "_" in extractor.metric_prefix else extractor.metric_prefix
    out: dict[str, float] = {}
    if "fd" in metrics:
        s = FeatureStats.from_features(feats)
        out[f"{extractor.metric_prefix}_{n}"] = fd_from_stats(s, ref_stats, fd_backend)
    if ("kid" in metrics or "pr" in metrics) and reference_features is None:
        raise DataError("KID and precision/recall need reference features, not only mu/sigma",
                        hint="use a reference with images (arr_0) or set eval.metrics=[fd]")
    if "kid" in metrics:
        m, sd = kernel_inception_distance(feats, reference_features, subset_size=min(1000, len(feats), len(reference_features)),
                                          seed=seed, device=device)
        out[f"kid_{family}_{n}"], out[f"kid_std_{family}_{n}"] = m, sd
    if "pr" in metrics:
        p, r = precision_recall(reference_features, feats, device=device)
        out[f"precision_{family}_{n}"], out[f"recall_{family}_{n}"] = p, r
    if "is" in metrics:
        out[f"is_{family}_{n}"] = inception_score(_logits(extractor, images))[0]
    extra: dict[str, Any] = {}
    if "div" in metrics:
        from harness.evaluate.diversity import pairwise_diversity

        out[f"div_{family}_{n}"] = pairwise_diversity(feats, max_pairs=pairs, seed=seed)["mean"]
    if "lpips" in metrics:
        from harness.evaluate.lpips_diversity import mean_pairwise_lpips

        if images is None:
            raise DataError("LPIPS needs the images, not only their features", hint="pass images= to score_features")
        if images.dim() != 4:
            raise DataError("LPIPS needs images, not vectors", hint="drop lpips from eval.metrics for vector data")
        lp = mean_pairwise_lpips(images, lpips_backbone, pairs=pairs, seed=seed)
        out[f"lpips_div_{n}"] = lp["mean"]
        extra = lp["protocol"]
    protocol = {"extractor": extractor.name, "weights_sha256": extractor.weights_sha256,
                "weights_source": extractor.weights_source, "ref_stats_sha256": ref_stats.sha256(),
                "n_samples": len(feats), "fd_backend": fd_backend, **extra}
    return {"metrics": out, "protocol": protocol}


def _score_adm(feats: np.ndarray, reference, reference_features: Optional[np.ndarray], extractor,
               metrics: Sequence[str], device: Optional[str]) -> dict[str, Any]:
    """The ADM suite's metrics and protocol; ``reference`` an ``ADMReference`` (npz) or None (features of a split)."""
    from harness.evaluate.adm_suite import IS_SPLIT_SIZE, PR_BLOCK, PR_K, ADMReference, score_adm

    ref = reference if isinstance(reference, ADMReference) else ADMReference.from_features(reference_features)
    out = score_adm(feats, ref, extractor, metrics, device=None if device is None else str(device))
    protocol = {"extractor": extractor.name, "weights_sha256": extractor.weights_sha256,
                "weights_source": extractor.weights_source, "suite": "ADM evaluator (guided-diffusion evaluations/evaluator.py)",
                "preprocess": "float32 [0,255] -> TF1 legacy bilinear 299x299 -> (x-128)/128",
                "features": "pool_3 (2048); mixed_6/conv[..., :7] NHWC (2023) for sFID",
                "ref_stats_sha256": ref.pool_stats.sha256() if ref.pool_stats is not None else None,
                "ref_spatial_stats_sha256": ref.spatial_stats.sha256() if ref.spatial_stats is not None else None,
                "is_softmax_source": extractor.logits_source, "is_split_size": IS_SPLIT_SIZE,
                "pr": f"k={PR_K}, float16 distance blocks of {PR_BLOCK} (float32 fallback)",
                "n_samples": len(feats), "fd_backend": "harness"}
    return {"metrics": out, "protocol": protocol}


def _logits(extractor, images: Optional[torch.Tensor]) -> np.ndarray:
    """The extractor's classifier logits of ``images``, for the Inception Score."""
    if images is None:
        raise DataError("the Inception Score needs the images (for the classifier's logits), not only their features",
                        hint="pass images= to score_features, or drop 'is' from eval.metrics")
    logits = extractor.logits(images)
    if logits is None:
        raise DataError(f"extractor {extractor.name} has no classifier logits, so no Inception Score",
                        hint="drop 'is' from eval.metrics or use an extractor with logits")
    return logits


def _pool_stats(feats: np.ndarray, extractor) -> tuple[FeatureStats, np.ndarray]:
    """The FD statistics of features: the ADM suite's pool_3 part with its float32 mean, else all of them."""
    if getattr(extractor, "suite", None) == "adm":
        from harness.evaluate.adm_suite import adm_stats

        pool = extractor.split(feats)[0]
        return adm_stats(pool), pool
    return FeatureStats.from_features(feats), feats


def _load_side(spec: str, extractor) -> tuple[Optional[FeatureStats], Optional[np.ndarray], str]:
    """Stats/features of an image folder, an ADM sample npz or a statistics npz."""
    from harness.evaluate.adm import read_adm_npz

    p = Path(spec)
    if p.is_dir():
        from PIL import Image

        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        if not files:
            raise DataError(f"{p} contains no PNG/JPEG images")
        imgs = [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]
        sizes = {tuple(i.shape) for i in imgs}
        if len(sizes) > 1:
            raise DataError(f"{p}: images have different sizes {sorted(sizes)[:3]}", hint="resize them to one size first")
        stats, feats = _pool_stats(extractor.features(torch.stack(imgs)), extractor)
        return stats, feats, f"folder:{len(files)}"
    arrays = read_adm_npz(p)
    if arrays["arr_0"] is not None:
        stats, feats = _pool_stats(extractor.features(torch.from_numpy(np.array(arrays["arr_0"])).permute(0, 3, 1, 2)),
                                   extractor)
        return stats, feats, f"npz-images:{len(feats)}"
    return FeatureStats(arrays["mu"], arrays["sigma"], 0), None, "npz-stats"


def fid_between(a: str, b: str, extractor) -> dict[str, Any]:
    """Frechet distance between two of: image folder, ADM sample npz, statistics npz (``harness fid A B``)."""
    sa, _, ka = _load_side(a, extractor)
    sb, _, kb = _load_side(b, extractor)
    if sa.mu.shape != sb.mu.shape:
        raise DataError(f"feature dimensions differ: {a} has {sa.mu.shape[0]}, {b} has {sb.mu.shape[0]}",
                        hint="statistics npz files must come from the same extractor")
    name = extractor.metric_prefix
    return {name: frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), "a": {"path": a, "kind": ka},
            "b": {"path": b, "kind": kb}, "extractor": extractor.name, "weights_sha256": extractor.weights_sha256}
