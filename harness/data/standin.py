"""A CIFAR-10-format STAND-IN built from Fashion-MNIST: real files for the real CIFAR-10 loader.

Why: CIFAR-10 cannot be downloaded here, yet the CIFAR-10 path of the harness (loader,
32x32x3 backbones, evaluation) must run in CI.  This module writes Fashion-MNIST, resized to
32x32 and replicated to RGB, in exactly the official ``cifar-10-batches-py`` layout
(``data_batch_1..5``, ``test_batch``, ``batches.meta``, ``readme.html``), so
:func:`harness.data.cifar10.cifar10` reads it unchanged.  Every artefact says loudly that
it is NOT CIFAR-10: ``readme.html``/``README.txt``, ``STANDIN.json`` (which the loader
records in ``info['standin']``) and the batch labels.  Numbers computed on it are never
CIFAR-10 numbers.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from harness.core.files import sha256_file
from harness.data.cifar10_format import DIRNAME, META_FILE, STANDIN_MANIFEST, TEST_FILES, TRAIN_FILES
from harness.data.fashion_mnist import CLASSES, DEFAULT_ROOT, LICENSE, load_idx_pair
from harness.data.transforms import resize_images

FORMAT_VERSION = 2
WARNING = ("THIS IS A STAND-IN, NOT CIFAR-10. It is Fashion-MNIST (Zalando, MIT licence) resized from 28x28x1 "
           "to 32x32x3 (bilinear, grey replicated to RGB) and written in CIFAR-10's python-pickle format so "
           "that the CIFAR-10 loader can be tested where CIFAR-10 cannot be downloaded. Labels are "
           "Fashion-MNIST classes. Never report numbers computed on it as CIFAR-10 results.")


def _label_names() -> list[bytes]:
    return [c.lower().replace("/", "_").replace(" ", "_").encode() for c in CLASSES]


def _to_cifar_rows(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> uint8 (n, 3072): resized to 32x32, R, G, B planes row-major."""
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    x = resize_images(x, 32)
    u8 = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(np.repeat(u8, 3, axis=1).reshape(len(images), 3072))


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]  # the pure-Python pickler is extensible
    """Write pickles byte-compatible with the official (Python 2) CIFAR-10 batches.

    Python 3 pickles ``bytes`` under protocol 2 as ``_codecs.encode(str)`` calls, which load
    as bytes whatever the reader's ``encoding``.  Python 2's ``str`` opcodes are written
    instead, so ``pickle.load(f, encoding='bytes')`` gives ``b'data'`` keys (as with the
    official files) and ``encoding='latin1'`` gives ``'data'`` keys (what torchvision uses);
    numpy's reconstructor is named ``numpy.core.multiarray`` as numpy 1.x and 2.x both read.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            qual = name or obj.__qualname__  # type: ignore[attr-defined]
            self.write(pickle.GLOBAL + f"{module.replace('numpy._core', 'numpy.core')}\n{qual}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _dump(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)  # the official batches are protocol-2 pickles from Python 2


def _batch(rows: np.ndarray, labels: np.ndarray, source_idx: np.ndarray, split: str, label: str) -> dict:
    names = _label_names()
    return {b"batch_label": label.encode(), b"labels": [int(v) for v in labels], b"data": rows,
            b"filenames": [b"fashion_mnist_%s_%05d_%s.png" % (split.encode(), int(i), names[int(c)])
                           for i, c in zip(source_idx, labels)]}


def _complete(path: Path, params: dict) -> bool:
    manifest = path / STANDIN_MANIFEST
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    files = recorded.get("files", {})
    return (recorded.get("params") == params
            and all((path / name).is_file() and (path / name).stat().st_size == size
                    for name, size in files.get("sizes", {}).items())
            and set(files.get("sizes", {})) >= {*TRAIN_FILES, *TEST_FILES, META_FILE})


def write_cifar10_standin(out_dir: Path, n_train: int = 5000, n_test: int = 1000, seed: int = 0, *,
                          fashion_root: Path | None = None) -> Path:
    """Write ``out_dir/cifar-10-batches-py`` (the stand-in) and return that path.

    ``n_train`` Fashion-MNIST training images (a seeded random choice, split over the five
    ``data_batch_*``) and the first ``n_test`` test images.  Idempotent: a complete copy with
    the same parameters is left alone; an incomplete or different one is replaced.  Written
    into a temporary directory and renamed, so concurrent writers never see half a dataset.
    """
    out_dir = Path(out_dir).expanduser()
    final = out_dir / DIRNAME
    params = {"format_version": FORMAT_VERSION, "n_train": int(n_train), "n_test": int(n_test), "seed": int(seed)}
    if _complete(final, params):
        return final
    if not 5 <= n_train <= 60000 or not 1 <= n_test <= 10000:
        raise ValueError(f"need 5 <= n_train <= 60000 and 1 <= n_test <= 10000, got {n_train}, {n_test}")
    src = Path(fashion_root) if fashion_root else DEFAULT_ROOT
    tr_img, tr_lbl, tr_files = load_idx_pair(src, "train")
    te_img, te_lbl, te_files = load_idx_pair(src, "test")
    pick = np.sort(torch.randperm(len(tr_lbl), generator=torch.Generator().manual_seed(int(seed))).numpy()[:n_train])
    te_idx = np.arange(n_test)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DIRNAME}.tmp-", dir=out_dir))
    try:
        rows = _to_cifar_rows(tr_img[pick])
        for i, part in enumerate(np.array_split(np.arange(n_train), len(TRAIN_FILES))):
            _dump(_batch(rows[part], tr_lbl[pick][part], pick[part], "train",
                         f"training batch {i + 1} of {len(TRAIN_FILES)} (FASHION-MNIST STAND-IN)"),
                  tmp / TRAIN_FILES[i])
        _dump(_batch(_to_cifar_rows(te_img[te_idx]), te_lbl[te_idx], te_idx, "test",
                     "testing batch 1 of 1 (FASHION-MNIST STAND-IN)"), tmp / TEST_FILES[0])
        _dump({b"num_cases_per_batch": int(np.ceil(n_train / len(TRAIN_FILES))), b"label_names": _label_names(),
               b"num_vis": 3072}, tmp / META_FILE)
        (tmp / "readme.html").write_text(f"<html><body><h1>STAND-IN &mdash; NOT CIFAR-10</h1><p>{WARNING}</p>"
                                         "</body></html>\n")
        (tmp / "README.txt").write_text(WARNING + "\n")
        names = [*TRAIN_FILES, *TEST_FILES, META_FILE]
        manifest = {"standin": True, "warning": WARNING, "source": "Fashion-MNIST (Debian dataset-fashion-mnist)",
                    "license": LICENSE, "params": params,
                    "source_files": {str(p): sha256_file(p, memo=True) for p in [*tr_files, *te_files]},
                    "files": {"sizes": {n: (tmp / n).stat().st_size for n in names},
                              "sha256": {n: sha256_file(tmp / n) for n in names}}}
        (tmp / STANDIN_MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.chmod(tmp, 0o755)
        if final.exists() and not _complete(final, params):
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another writer finished first
            if not _complete(final, params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
