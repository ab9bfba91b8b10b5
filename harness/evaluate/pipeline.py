"""Evaluation protocol of an experiment: seeded samples -> features -> metrics + protocol record.

Sample i uses seed ``eval.seed_offset + i`` (STYLE practice 7); reference features are
cached by (data node, split, n, extractor, weights SHA-256); every result carries its
protocol (extractor, weights hash, reference hash, n, sampler, NFE, seeds) so a number is
never separated from how it was obtained (STYLE practice 8).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from harness.core.registry import get
from harness.core.files import sha256_file
from harness.core.hashing import content_hash
from harness.core.versions import PROTOCOL_VERSION
from harness.evaluate.images import check_metric_reference, image_protocol, to_metric_images  # latents (issue 14.4)



def build_sampler(cfg: Mapping[str, Any]):
    node = cfg["sampler"]
    return get("sampler", node["name"])(**{k: v for k, v in node.items() if k != "name"})


def generate_samples(field, cfg: Mapping[str, Any], datasets, n: Optional[int] = None):
    """(samples (N, ...) float, labels (N,) | None, NFE per sample) from the field."""
    from harness.sample import generate

    data = datasets.get(cfg["data"])
    ev = cfg["eval"]
    n = int(n or ev["n_samples"])
    seeds = range(int(ev["seed_offset"]), int(ev["seed_offset"]) + n)
    xs, ys, nfe = [], [], 0
    for x, y, nfe in generate(field, build_sampler(cfg), seeds=seeds, shape=data.shape, num_classes=data.num_classes,
                              batch_size=int(ev["batch_size"]), class_label=ev["class_label"]):
        xs.append(x)
        if y is not None:
            ys.append(y)
    return torch.cat(xs), (torch.cat(ys) if ys else None), nfe


def images_uint8(x: torch.Tensor) -> torch.Tensor:
    from harness.sample import to_uint8

    return to_uint8(x)


def save_samples_npz(path: Path, samples: torch.Tensor, labels: Optional[torch.Tensor], dataset) -> Path:  # latents (issue 14.4)
    """ADM evaluator-suite layout: ``arr_0`` uint8 (N, H, W, C) (latents decoded), ``arr_1`` labels; vectors as they are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": to_metric_images(samples, dataset).permute(0, 2, 3, 1).numpy()} if dataset.kind != "vector" else {"arr_0": samples.numpy()}  # latents (issue 14.4)
    if labels is not None:
        arrays["arr_1"] = labels.numpy()
    np.savez(path, **arrays)
    return path


def reference_node(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The data node of the reference set: same data, ``eval.reference_split``, ``eval.reference_n`` items."""
    node = dict(cfg["data"])
    node.pop("subset_fraction", None)
    node.pop("subset_seed", None)
    if "split" in node:
        node["split"] = cfg["eval"]["reference_split"]
    if "limit" in node and cfg["eval"]["reference_n"]:
        node["limit"] = int(cfg["eval"]["reference_n"])
    if "seed" in node:  # synthetic data: an independent draw
        node["seed"] = int(node["seed"]) + 1
    return node


def reference_features(cfg: Mapping[str, Any], extractor, datasets) -> tuple[np.ndarray, str]:
    """Reference features (cached on disk) and their hash."""
    node = reference_node(cfg)
    key = {"data": node, "extractor": extractor.name, "weights": extractor.weights_sha256, "n": cfg["eval"]["reference_n"]}
    cache = Path(cfg["paths"]["cache"]).expanduser() / "features" / f"{content_hash(key)}.npy"
    if cache.exists():
        feats = np.load(cache)
    else:
        data = datasets.get(node)
        x = data.get_batch(torch.arange(min(int(cfg["eval"]["reference_n"]) or len(data), len(data))))[0]  # latents (issue 14.4): reads n rows, not all
        feats = extractor.features(images_uint8(x) if data.kind == "image" else x)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        tmp.replace(cache)
    return feats, content_hash({"key": key, "sum": float(np.asarray(feats, dtype=np.float64).sum())})


def reference_from_npz(path: Path, extractor):
    """Reference from an ADM-format npz: features of its ``arr_0`` batch, else its ``mu``/``sigma`` (FD only)."""
    from harness.evaluate.adm import read_adm_npz
    from harness.evaluate.metrics import FeatureStats

    arrays = read_adm_npz(path)
    file_hash = sha256_file(path)
    if arrays["arr_0"] is not None:
        feats = extractor.features(torch.from_numpy(np.array(arrays["arr_0"])).permute(0, 3, 1, 2))
        return None, feats, file_hash, f"adm-npz:{path}:arr_0"
    if extractor.name != "inception_v3":
        from harness.core.errors import DataError

        raise DataError(f"{path} holds only mu/sigma, which are Inception-V3 statistics; extractor {extractor.name} cannot use them",
                        hint="use eval=fid_inception, or a reference npz with images (arr_0)")
    return FeatureStats(arrays["mu"], arrays["sigma"], 0), None, file_hash, f"adm-npz:{path}:mu,sigma"


def build_extractor(cfg: Mapping[str, Any]):
    ev = cfg["eval"]
    return get("extractor", ev["extractor"])(**dict(ev["extractor_kwargs"] or {}))


def score(samples: torch.Tensor, cfg: Mapping[str, Any], datasets, *, nfe: Optional[int]) -> dict[str, Any]:
    """Metrics and protocol of a sample set against the configured reference."""
    from harness.evaluate.scoring import score_samples

    ev = cfg["eval"]
    if not ev["metrics"]:
        return {"metrics": {}, "protocol": {"nfe": nfe, "n_samples": len(samples)}}
    data = datasets.get(cfg["data"])  # latents (issue 14.4): moved up
    check_metric_reference(ev, data)  # latents (issue 14.4)
    extractor = build_extractor(cfg)
    ref_stats = None
    if ev.get("reference"):
        ref_stats, ref, ref_hash, ref_name = reference_from_npz(Path(ev["reference"]), extractor)
    else:
        ref, ref_hash = reference_features(cfg, extractor, datasets)
        ref_name = json.dumps(reference_node(cfg), sort_keys=True)
    inputs = to_metric_images(samples, data) if data.kind != "vector" else samples  # latents (issue 14.4)
    result = score_samples(inputs, reference=ref_stats, reference_features=ref, extractor=extractor,
                           metrics=tuple(ev["metrics"]), seed=int(ev["seed_offset"]), fd_backend=ev.get("fd_backend", "harness"),
                           lpips_backbone=ev.get("lpips_backbone"), pairs=int(ev.get("lpips_pairs", 2000)))
    result["protocol"].update({
        "protocol_version": PROTOCOL_VERSION, "reference": ref_name,
        "reference_hash": ref_hash, "reference_n": None if ref is None else len(ref),
        "sampler": json.dumps(cfg["sampler"], sort_keys=True),
        "nfe": nfe, "seeds": f"{ev['seed_offset']}..{int(ev['seed_offset']) + len(samples) - 1}",
        "class_label": ev["class_label"],
        **image_protocol(data),  # latents (issue 14.4)
    })
    return result


def evaluate_field(field, cfg: Mapping[str, Any], *, datasets, tracker=None, run_id: Optional[str] = None) -> dict[str, Any]:
    """Sample the field, score it, and (with a tracker) log metrics, protocol and a sample grid.

    MoE backbones also report ``moe_c_infer_avg`` (seed 002 Eq. 15) over this sampling run.
    """
    from harness.backbones.moe import reset_routing_stats, routing_metrics

    reset_routing_stats(field)
    data = datasets.get(cfg["data"])  # latents (issue 14.4)
    check_metric_reference(cfg["eval"], data)  # latents (issue 14.4): before sampling
    samples, labels, nfe = generate_samples(field, cfg, datasets)
    result = score(samples, cfg, datasets, nfe=nfe)
    result["metrics"].update(routing_metrics(field))
    if tracker is not None and run_id is not None:
        tracker.log_metrics(run_id, result["metrics"])
        tracker.log_params(run_id, {f"protocol.{k}": v for k, v in result["protocol"].items()})
        tracker.log_dict(run_id, result["protocol"], "protocol.json")
        if data.kind != "vector":  # latents (issue 14.4)
            tracker.log_artifact(run_id, sample_grid(to_metric_images(samples[:64], data)), "samples")  # latents (issue 14.4)
    return result


def sample_grid(samples: torch.Tensor, nrow: int = 8) -> Path:
    """PNG grid of uint8 images."""
    from torchvision.utils import save_image

    path = Path(tempfile.mkdtemp()) / "sample_grid.png"
    save_image(samples.float() / 255, path, nrow=nrow)  # latents (issue 14.4)
    return path


def score_npz(path: Path, cfg: Mapping[str, Any], datasets) -> dict[str, Any]:
    """Score an ADM-format sample npz (``arr_0`` uint8 NHWC) against the configured reference."""
    from harness.evaluate.adm import read_adm_npz

    arrays = read_adm_npz(Path(path))
    if arrays.get("arr_0") is None:
        from harness.core.errors import DataError

        raise DataError(f"{path} has no sample batch arr_0", hint="expected an ADM-format sample npz (arr_0: uint8 N x H x W x C)")
    imgs = torch.from_numpy(np.asarray(arrays["arr_0"])).permute(0, 3, 1, 2)  # latents (issue 14.4): uint8 images, never decoded again
    return score(imgs, cfg, datasets, nfe=None)
