"""Evaluation protocol of an experiment: seeded samples -> images -> features -> metrics + protocol record.

Sample i uses seed ``eval.seed_offset + i`` (STYLE practice 7).  Under ``torch.distributed`` rank r
samples the seeds r, r + N, ... on its own device, turns each batch into metric images and features
right away (nothing of size n x H x W x 3 in floats is ever held), and the features are gathered back
in seed order, so the sample set, its order and its score do not depend on N (EDM2's rule, as in
DiT/SiT's ``sample_ddp.py`` but with per-sample seeds).  Metrics are computed once, on rank 0, and
broadcast.  Reference features are cached by (data node, split, n, extractor, weights SHA-256); every
result carries its protocol (extractor, weights hash, reference hash, n, sampler, NFE, seeds) so a
number is never separated from how it was obtained (STYLE practice 8).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from harness.core import dist
from harness.core.errors import DataError
from harness.core.files import sha256_file, write_atomic
from harness.core.hashing import content_hash
from harness.core.registry import get
from harness.core.versions import PROTOCOL_VERSION
from harness.evaluate.exact import check_exact_metrics, exact_metrics
from harness.evaluate.heldout import heldout_metrics
from harness.evaluate.images import check_metric_reference, image_protocol, to_metric_images
from harness.evaluate.text_alignment import NAME as ALIGNMENT, alignment_metrics, caption_field
from harness.sample import generate

GRID = 64  # samples in the logged grid


def build_sampler(cfg: Mapping[str, Any]):
    node = cfg["sampler"]
    return get("sampler", node["name"])(**{k: v for k, v in node.items() if k != "name"})


def eval_device(cfg: Mapping[str, Any]) -> torch.device:
    """Where this process samples and extracts features (``eval.device``, ``auto`` = its GPU if any)."""
    device = dist.resolve_device(cfg["eval"].get("device", "auto"))
    dist.enable_tf32(device)
    return device


def metric_inputs(x: torch.Tensor, dataset) -> torch.Tensor:
    """What extractors and the sample npz take: uint8 images (B, C, H, W) (latents decoded by the data's VAE,
    on the device the samples are on), or the vectors themselves for vector data."""
    if dataset.kind == "vector":
        return x.cpu()
    return to_metric_images(x, dataset).cpu()


@dataclasses.dataclass
class Sampled:
    """One (sharded) sampling pass: what every rank holds afterwards.

    ``features``/``grid``/``labels`` are gathered in seed order on every rank; ``local`` are this
    rank's metric inputs (its seeds, in order), kept only when asked (npz output, image metrics).
    """

    n: int
    nfe: int
    features: Optional[np.ndarray]
    grid: Optional[torch.Tensor]
    labels: Optional[torch.Tensor]
    local: Optional[torch.Tensor]


def seeds_of(cfg: Mapping[str, Any], n: Optional[int] = None) -> list[int]:
    ev = cfg["eval"]
    n = int(n or ev["n_samples"])
    return list(range(int(ev["seed_offset"]), int(ev["seed_offset"]) + n))


def sample_pass(field, cfg: Mapping[str, Any], dataset, *, n: Optional[int] = None, extractor=None,
                keep_local: bool = False, device: Optional[torch.device] = None) -> Sampled:
    """Sample this rank's share of the seeds batch by batch, extracting features as it goes (see :class:`Sampled`)."""
    ev = cfg["eval"]
    device = device or eval_device(cfg)
    seeds = seeds_of(cfg, n)
    mine = dist.shard(seeds)
    grid_count = len(range(dist.rank(), min(GRID, len(seeds)), dist.world()))
    feats, kept, grid, labels, nfe = [], [], [], [], 0
    for x, y, nfe in generate(field, build_sampler(cfg), seeds=mine, shape=dataset.shape,
                              num_classes=dataset.num_classes, batch_size=int(ev["batch_size"]),
                              class_label=ev["class_label"], device=device):
        inputs = metric_inputs(x.to(device) if dataset.kind == "latent" else x, dataset)
        if extractor is not None:
            feats.append(torch.as_tensor(np.asarray(extractor.features(inputs))))
        if keep_local:
            kept.append(inputs)
        if sum(len(g) for g in grid) < grid_count:
            grid.append(inputs[: grid_count - sum(len(g) for g in grid)])
        if y is not None:
            labels.append(y)
    nfe = dist.broadcast(nfe)  # rank 0 always holds seed 0
    out_feats = _gather_cat(feats, len(seeds)).numpy() if extractor is not None else None
    out_labels = _gather_cat(labels, len(seeds)) if dataset.num_classes > 0 else None
    return Sampled(len(seeds), nfe, out_feats, _gather_cat(grid, min(GRID, len(seeds))), out_labels,
                   torch.cat(kept) if kept else None)


def _gather_cat(parts: list[torch.Tensor], total: int) -> Optional[torch.Tensor]:
    """Concatenate this rank's pieces and gather ``total`` rows in seed order on every rank.

    A rank with no rows (fewer seeds than processes) takes the row shape and dtype from rank 0,
    which always holds seed 0.
    """
    if total == 0:
        return None
    local = torch.cat(parts) if parts else None
    if dist.world() == 1:
        return local
    like = dist.broadcast(None if local is None else local[:0])
    return dist.gather_rows(local if local is not None else like, total)


def gather_inputs(s: Sampled) -> torch.Tensor:
    """Every metric input in seed order (needs ``keep_local``): for metrics that need the images themselves."""
    return _gather_cat([s.local], s.n)


def write_sample_npz(field, cfg: Mapping[str, Any], dataset, path: Path) -> tuple[Path, int, int]:
    """``harness sample``: every rank samples its seeds; rank 0 writes the ADM npz in seed order.

    Each rank writes its share (uint8 NHWC) to a temporary ``.npy`` beside the output; rank 0 then
    interleaves the shares into ``arr_0`` through a memory map, so no process holds the whole set.
    Returns (path, n, NFE per sample).
    """
    path = Path(path)
    if dataset.kind == "latent":
        dataset.decoder.check()  # the VAE that encoded the latents is here, before anything is sampled
    s = sample_pass(field, cfg, dataset, keep_local=True)
    local = s.local if s.local is not None else torch.zeros((0, *dataset.shape))
    arr = local.permute(0, 2, 3, 1).numpy() if local.dim() == 4 else local.numpy()
    part = path.with_name(f".{path.name}.rank{dist.rank()}.npy")
    if dist.world() > 1:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(part, arr)
    dist.barrier()
    if dist.is_main():
        if dist.world() == 1:
            full = arr
        else:
            shares = [np.load(path.with_name(f".{path.name}.rank{r}.npy"), mmap_mode="r") for r in range(dist.world())]
            full = np.lib.format.open_memmap(path.with_name(f".{path.name}.all.npy"), mode="w+", dtype=shares[0].dtype,
                                             shape=(s.n, *shares[0].shape[1:]))
            for r, share in enumerate(shares):
                full[r::dist.world()] = share
        arrays = {"arr_0": full}
        if s.labels is not None:
            arrays["arr_1"] = s.labels.numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: np.savez(f, **arrays))
        for tmp in [path.with_name(f".{path.name}.rank{r}.npy") for r in range(dist.world())] + [path.with_name(f".{path.name}.all.npy")]:
            tmp.unlink(missing_ok=True)
    dist.barrier()
    return path, s.n, s.nfe


def reference_node(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The data node of the reference set: same data, ``eval.reference_split``, ``eval.reference_n`` items."""
    node = dict(cfg["data"])
    node.pop("subset_fraction", None)
    node.pop("subset_seed", None)
    node.pop("hflip", None)   # training augmentation: the reference split is never flipped
    if "split" in node:
        node["split"] = cfg["eval"]["reference_split"]
    if "limit" in node and cfg["eval"]["reference_n"]:
        node["limit"] = int(cfg["eval"]["reference_n"])
    if "seed" in node:  # synthetic data: an independent draw
        node["seed"] = int(node["seed"]) + 1
    return node


def reference_features(cfg: Mapping[str, Any], extractor, datasets) -> tuple[np.ndarray, str]:
    """Reference features (cached on disk) and their hash; extracted batch by batch."""
    node = reference_node(cfg)
    key = {"data": node, "extractor": extractor.name, "weights": extractor.weights_sha256, "n": cfg["eval"]["reference_n"]}
    cache = Path(cfg["paths"]["cache"]).expanduser() / "features" / f"{content_hash(key)}.npy"
    if cache.exists():
        feats = np.load(cache)
    else:
        data = datasets.get(node)
        n = min(int(cfg["eval"]["reference_n"]) or len(data), len(data))
        step = int(cfg["eval"]["batch_size"])
        feats = np.concatenate([np.asarray(extractor.features(metric_inputs(data.get_batch(torch.arange(i, min(i + step, n)))[0],
                                                                            data)))
                                for i in range(0, n, step)])   # reads n rows, batch by batch (latent shards stay lazy)
        write_atomic(cache, lambda f: np.save(f, feats))
    return feats, content_hash({"key": key, "sum": float(np.asarray(feats, dtype=np.float64).sum())})


def reference_from_npz(path: Path, extractor):
    """Reference from an ADM-format npz: features of its ``arr_0`` batch, else its ``mu``/``sigma`` (FD only)."""
    from harness.evaluate.adm import read_adm_npz
    from harness.evaluate.metrics import FeatureStats

    arrays = read_adm_npz(path)
    file_hash = sha256_file(path, memo=True)
    if getattr(extractor, "suite", None) == "adm":   # its own statistics where present, arr_0 for P/R (read_statistics)
        from harness.evaluate.adm_suite import ADMReference

        feats = (extractor.features(torch.from_numpy(np.array(arrays["arr_0"])).permute(0, 3, 1, 2))
                 if arrays["arr_0"] is not None else None)
        held = ",".join(k for k in ("arr_0", "mu", "sigma", "mu_s", "sigma_s") if arrays.get(k) is not None)
        return ADMReference.from_npz(arrays, feats), feats, file_hash, f"adm-npz:{path}:{held}"
    if arrays["arr_0"] is not None:
        feats = extractor.features(torch.from_numpy(np.array(arrays["arr_0"])).permute(0, 3, 1, 2))
        return None, feats, file_hash, f"adm-npz:{path}:arr_0"
    if extractor.name != "inception_v3":
        raise DataError(f"{path} holds only mu/sigma, which are Inception-V3 statistics; extractor {extractor.name} cannot use them",
                        hint="use eval=fid_inception, or a reference npz with images (arr_0)")
    return FeatureStats(arrays["mu"], arrays["sigma"], 0), None, file_hash, f"adm-npz:{path}:mu,sigma"


def build_extractor(cfg: Mapping[str, Any], device: Optional[torch.device] = None):
    """The configured feature extractor, running on ``device`` (unless ``eval.extractor_kwargs.device`` says)."""
    ev = cfg["eval"]
    cls = get("extractor", ev["extractor"])
    kwargs = dict(ev["extractor_kwargs"] or {})
    if device is not None and "device" in inspect.signature(cls).parameters:
        kwargs.setdefault("device", str(device))
    return cls(**kwargs)


def needs_images(cfg: Mapping[str, Any]) -> bool:
    """Metrics computed from the images themselves rather than their features (LPIPS pairs, IS logits)."""
    return bool({"lpips", "is"} & set(cfg["eval"]["metrics"]))


def score_features(feats: np.ndarray, cfg: Mapping[str, Any], datasets, *, extractor, nfe: Optional[int],
                   images: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Metrics and protocol of a sample set's features against the configured reference (one process)."""
    from harness.evaluate.scoring import score_features as metrics_of

    ev = cfg["eval"]
    ref_stats = None
    if ev.get("reference"):
        ref_stats, ref, ref_hash, ref_name = reference_from_npz(Path(ev["reference"]), extractor)
    else:
        ref, ref_hash = reference_features(cfg, extractor, datasets)
        ref_name = json.dumps(reference_node(cfg), sort_keys=True)
    result = metrics_of(feats, images=images, reference=ref_stats, reference_features=ref, extractor=extractor,
                        metrics=tuple(ev["metrics"]), seed=int(ev["seed_offset"]), fd_backend=ev.get("fd_backend", "harness"),
                        lpips_backbone=ev.get("lpips_backbone"), pairs=int(ev.get("lpips_pairs", 2000)))
    result["protocol"].update({
        "protocol_version": PROTOCOL_VERSION, "reference": ref_name,
        "reference_hash": ref_hash, "reference_n": None if ref is None else len(ref),
        "sampler": json.dumps(cfg["sampler"], sort_keys=True),
        "nfe": nfe, "seeds": f"{ev['seed_offset']}..{int(ev['seed_offset']) + len(feats) - 1}",
        "class_label": ev["class_label"], "world_size": dist.world(), **image_protocol(datasets.get(cfg["data"])),
    })
    return result


def score(samples: torch.Tensor, cfg: Mapping[str, Any], datasets, *, nfe: Optional[int]) -> dict[str, Any]:
    """Metrics and protocol of a whole sample set held by this process (``harness eval --samples``)."""
    ev = cfg["eval"]
    if not ev["metrics"]:
        return {"metrics": {}, "protocol": {"nfe": nfe, "n_samples": len(samples)}}
    data = datasets.get(cfg["data"])
    check_metric_reference(ev, data)
    extractor = build_extractor(cfg, eval_device(cfg))
    inputs = metric_inputs(samples, data)
    return score_features(np.asarray(extractor.features(inputs)), cfg, datasets, extractor=extractor, nfe=nfe,
                          images=inputs)


def evaluate_field(field, cfg: Mapping[str, Any], *, datasets, tracker=None, run_id: Optional[str] = None) -> dict[str, Any]:
    """Sample the field (sharded over the job's processes), score it once, and log metrics, protocol and a grid.

    Collective under ``torch.distributed``; ``tracker``/``run_id`` are used on rank 0 only.  MoE
    backbones also report ``moe_c_infer_avg`` (seed 002 Eq. 15) and ``moe_c_infer_layer<i>`` over every
    process's sampling, and the capacity by time bin and class label as ``moe_capacity.json`` (Fig. 1c/d).
    """
    from harness.backbones.moe import reset_routing_stats, routing_curves, routing_metrics, routing_totals

    ev = cfg["eval"]
    dataset = datasets.get(cfg["data"])
    check_metric_reference(ev, dataset)  # decoded latents need an ADM reference batch at their resolution
    check_exact_metrics(ev, dataset)
    reset_routing_stats(field)
    device = eval_device(cfg)
    extractor = build_extractor(cfg, device) if ev["metrics"] else None
    align = ALIGNMENT in ev["metrics"]               # the text twin's caption_class_accuracy needs the images
    keep = needs_images(cfg) or align
    s = sample_pass(caption_field(field, dataset), cfg, dataset, extractor=extractor, keep_local=keep, device=device)
    images = gather_inputs(s) if keep else None
    classes = int(getattr(dataset, "num_classes", 0) or 0)
    totals = dist.all_sum(routing_totals(field, classes))   # the same length on every rank
    curves = None
    result = None
    if dist.is_main():
        if extractor is None:
            result = {"metrics": {}, "protocol": {"nfe": s.nfe, "n_samples": s.n}}
        else:
            result = score_features(s.features, cfg, datasets, extractor=extractor, nfe=s.nfe, images=images)
        result["metrics"].update(routing_metrics(field, totals, classes))
        if align:
            aligned = alignment_metrics(images, s.labels, extractor)
            result["metrics"][ALIGNMENT] = aligned[ALIGNMENT]
            result["protocol"].update({"alignment_classifier": aligned["classifier"], "alignment_note": aligned["note"]})
        curves = routing_curves(field, totals, classes)
        if curves:
            result["moe_capacity"] = curves
        exact, exact_proto = exact_metrics(field, dataset, ev, s.features, device=device)   # the mixture's closed form
        result["metrics"].update(exact)
        result["protocol"].update(exact_proto)
        if "heldout_fm" in ev["metrics"]:
            held, held_proto = heldout_metrics(field, ev, datasets.get(reference_node(cfg)), device=device)
            result["metrics"].update(held)
            result["protocol"].update(held_proto)
        if tracker is not None and run_id is not None:
            tracker.log_metrics(run_id, result["metrics"])
            tracker.log_params(run_id, {f"protocol.{k}": v for k, v in result["protocol"].items()})
            tracker.log_dict(run_id, result["protocol"], "protocol.json")
            if curves:
                tracker.log_dict(run_id, curves, "moe_capacity.json")
            if s.grid is not None and s.grid.dim() == 4:
                tracker.log_artifact(run_id, sample_grid(s.grid), "samples")
                result["sample_grid"] = tracker.artifact_location(run_id, "samples/sample_grid.png")
    return dist.broadcast(result)


def sample_grid(samples: torch.Tensor, nrow: int = 8) -> Path:
    """PNG grid of images (uint8, or floats in [-1, 1])."""
    from torchvision.utils import save_image

    x = samples.float() / 255 if samples.dtype == torch.uint8 else (samples.clamp(-1, 1) + 1) / 2
    path = Path(tempfile.mkdtemp()) / "sample_grid.png"
    save_image(x, path, nrow=nrow)
    return path


def score_npz(path: Path, cfg: Mapping[str, Any], datasets) -> dict[str, Any]:
    """Score an ADM-format sample npz (``arr_0`` uint8 NHWC) against the configured reference."""
    from harness.evaluate.adm import read_adm_npz

    arrays = read_adm_npz(Path(path))
    if arrays.get("arr_0") is None:
        raise DataError(f"{path} has no sample batch arr_0", hint="expected an ADM-format sample npz (arr_0: uint8 N x H x W x C)")
    imgs = torch.from_numpy(np.asarray(arrays["arr_0"])).permute(0, 3, 1, 2)   # uint8 images, never decoded again
    return score(imgs, cfg, datasets, nfe=None)
