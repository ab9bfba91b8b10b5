"""The ADM evaluator-suite npz format (Dhariwal & Nichol 2021) that SiT, DiT, DiffMoE and SG report against.

A sample batch holds ``arr_0``: uint8 (N, H, W, 3) images (NHWC), optionally ``arr_1`` labels;
a reference batch may also hold precomputed ``mu`` and ``sigma`` (pool_3) and ``mu_s``, ``sigma_s``
(the sFID features; :mod:`harness.evaluate.adm_suite`).  Reading one lets a user with the
official ImageNet reference batch score against it without its images.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from harness.core.errors import DataError


def read_adm_npz(path: Path) -> dict[str, Optional[np.ndarray]]:
    """{'arr_0': uint8 NHWC or None, 'mu', 'sigma', 'mu_s', 'sigma_s': statistics or None, 'arr_1': labels or None}."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist", hint="expected an ADM-format .npz (arr_0 images and/or mu, sigma)")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            out = {k: (np.asarray(z[k]) if k in keys else None) for k in ("arr_0", "arr_1", "mu", "sigma", "mu_s", "sigma_s")}
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataError(f"{path} is not a readable npz: {err}") from None
    if out["arr_0"] is None and (out["mu"] is None or out["sigma"] is None):
        raise DataError(f"{path} has neither arr_0 nor mu+sigma (keys: {', '.join(sorted(keys)) or 'none'})",
                        hint="expected an ADM sample/reference batch")
    a = out["arr_0"]
    if a is not None and (a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] not in (1, 3)):
        raise DataError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {a.dtype} {a.shape}")
    if out["mu"] is not None and out["sigma"] is not None and out["sigma"].shape != (len(out["mu"]),) * 2:
        raise DataError(f"{path}: sigma shape {out['sigma'].shape} does not match mu {out['mu'].shape}")
    if out["mu_s"] is not None and out["sigma_s"] is not None and out["sigma_s"].shape != (len(out["mu_s"]),) * 2:
        raise DataError(f"{path}: sigma_s shape {out['sigma_s'].shape} does not match mu_s {out['mu_s'].shape}")
    return out


def adm_npz_keys(path: Path) -> set[str]:
    """The array names of an npz from its zip directory only (nothing is read)."""
    try:
        with zipfile.ZipFile(Path(path)) as zf:
            return {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path} is not a readable npz: {err}") from None


def write_adm_npz(path: Path, images_uint8_nhwc: Optional[np.ndarray] = None, mu: Optional[np.ndarray] = None,
                  sigma: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
                  mu_s: Optional[np.ndarray] = None, sigma_s: Optional[np.ndarray] = None) -> Path:
    """Write the same layout (only the given arrays)."""
    arrays = {k: v for k, v in {"arr_0": images_uint8_nhwc, "arr_1": labels, "mu": mu, "sigma": sigma,
                                "mu_s": mu_s, "sigma_s": sigma_s}.items() if v is not None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def adm_image_shape(path: Path) -> Optional[tuple[int, int, int]]:  # latents (issue 14.4): the resolution check
    """(H, W, C) of an ADM npz's ``arr_0`` from its header only (a 50K reference batch is ~10 GB); ``None`` without images."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if "arr_0.npy" not in zf.namelist():
                return None
            with zf.open("arr_0.npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_2_0 if version >= (2, 0) else np.lib.format.read_array_header_1_0
                shape, _, dtype = read_header(f)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataError(f"{path} is not a readable npz: {err}") from None
    if dtype != np.uint8 or len(shape) != 4:
        raise DataError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {dtype} {shape}")
    return tuple(int(s) for s in shape[1:])
