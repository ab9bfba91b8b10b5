"""A folder of images, one subfolder per class (``root/<class_name>/*.png|jpg``).

Why: the generic way to bring one's own data (an ImageNet subset, a sample dump, any
dataset exported as files), laid out like torchvision's ``ImageFolder`` so existing exports
work unchanged.  Classes are the subfolder names sorted alphabetically (label = position);
files are sorted by name.  A folder with images but no subfolders is one unconditional set
(``num_classes = 0``), which is how sample folders are scored.  Every image is converted to
``mode`` (RGB or L), centre-cropped to a square (optional, as ADM/DiT do for ImageNet) and
resized to ``image_size`` with PIL's bicubic filter.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.core.files import sha256_file
from harness.data.base import ArrayDataset, finish
from harness.data.transforms import uint8_to_float
from harness.core.errors import ConfigError, DataError
from harness.core.registry import register

EXTENSIONS = (".png", ".jpg", ".jpeg")
MODES = {"RGB": 3, "L": 1}


def list_images(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """``[(file, label)]`` and the class names, in the deterministic order described above."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist",
                        hint="set data.root to a directory of class subfolders holding .png/.jpg files")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)

    items = [(p, label) for label, name in enumerate(classes) for p in images_in(root / name)]
    if not classes:
        items = [(p, 0) for p in images_in(root)]
    if not items:
        raise DataError(f"no .png/.jpg images under {root} (looked in {len(classes)} class folders)",
                        hint="expected root/<class_name>/*.png")
    return items, classes


def load_image(path: Path, size: int, mode: str, center_crop: bool) -> np.ndarray:
    """One image as uint8 (C, size, size)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if center_crop and im.width != im.height:
                side = min(im.width, im.height)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side))
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}", hint="remove or replace the broken file") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@register("dataset", "image_folder")
def image_folder(*, root: str, image_size: int = 32, mode: str = "RGB", center_crop: bool = True,
                 limit: int | None = None, hash_files: bool = False) -> ArrayDataset:
    """Images under ``root`` as (N, C, image_size, image_size) float32 in [-1, 1].

    ``mode`` is ``'RGB'`` (3 channels) or ``'L'`` (grey, 1 channel); ``limit`` keeps the first
    n in class-then-file order; ``hash_files`` records each file's SHA-256 (slow for big folders;
    a hash of the file list is always recorded).
    """
    if mode not in MODES:
        raise ConfigError(f"data.mode must be one of {', '.join(MODES)}, got {mode!r}")
    if image_size < 1:
        raise ConfigError(f"data.image_size must be >= 1, got {image_size}")
    base = Path(root).expanduser()
    items, classes = list_images(base)
    if limit is not None:
        items = items[: int(limit)]
    arrays = np.empty((len(items), MODES[mode], image_size, image_size), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        arrays[i] = load_image(path, image_size, mode, center_crop)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    import hashlib

    listing = hashlib.sha256("\n".join(str(p.relative_to(base)) for p, _ in items).encode()).hexdigest()
    info = {"source": "image folder", "root": str(base), "classes": classes, "n_files": len(items),
            "file_list_sha256": listing, "image_size": image_size, "mode": mode, "center_crop": center_crop,
            "license": "as the folder's owner states (unknown to the harness)"}
    if hash_files:
        info["files"] = {str(p): sha256_file(p, memo=True) for p, _ in items}
    ds = ArrayDataset(uint8_to_float(torch.from_numpy(arrays)), labels, num_classes=len(classes),
                      name="image_folder", kind="image", info=info)
    return finish(ds, limit)
