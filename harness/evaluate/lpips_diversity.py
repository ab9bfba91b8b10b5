"""Mean pairwise LPIPS among generated samples: seed 003's diversity metric (Tab. 3, Sec. 3.3.2; Fig. 4).

LPIPS (Zhang et al. 2018, v0.1, AlexNet) = learned linear heads on ImageNet-trained AlexNet features.
The PyPI package ``lpips`` ships the linear heads (``lpips/weights/v0.1/alex.pth``) but downloads the
AlexNet backbone from torchvision, which cannot happen here.  So the backbone is a user-supplied file
in torchvision's format (``alexnet-owt-7be5be79.pth``, keys ``features.<i>.weight|bias``), named by
``eval.lpips_backbone``; its SHA-256 and the heads' SHA-256 go into the protocol.  Without that file
there is no LPIPS: the feature-space stand-in is ``eval.metrics=[div]`` (``div_<extractor>``), and is
never called LPIPS.

Images smaller than AlexNet's receptive field are upsampled (bilinear) to ``min_size``; grey images
are repeated to 3 channels.  Both are recorded in the protocol.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.errors import DataError

TORCHVISION_ALEXNET = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def _heads_path() -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"


def load_lpips(backbone: Path | str) -> tuple[torch.nn.Module, dict[str, str]]:
    """LPIPS-Alex with the shipped v0.1 heads and the AlexNet backbone read from ``backbone``.

    Raises DataError naming the file when it is missing, unreadable, or not a torchvision AlexNet
    state dict (every ``features.*`` tensor must be present with the right shape).
    """
    import warnings

    from harness.evaluate.feature_extractors import file_sha256

    path = Path(backbone).expanduser()
    if not path.is_file():
        raise DataError(f"eval.lpips_backbone: {path} does not exist",
                        hint=f"download torchvision's AlexNet weights ({TORCHVISION_ALEXNET}) on a machine with "
                             "network access and point eval.lpips_backbone at the file, or use eval.metrics=[div]")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise DataError(f"eval.lpips_backbone: cannot read {path} as a torch state dict ({type(err).__name__}: {err})",
                        hint="expected torchvision's alexnet-owt-7be5be79.pth") from None
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    for name, param in model.net.named_parameters():   # slice<k>.<i>.weight  <->  features.<i>.weight
        key = "features." + name.split(".", 1)[1]
        if key not in state or tuple(state[key].shape) != tuple(param.shape):
            raise DataError(f"eval.lpips_backbone: {path} has no tensor {key} of shape {tuple(param.shape)}",
                            hint="expected torchvision's AlexNet state dict (alexnet-owt-7be5be79.pth)")
        with torch.no_grad():
            param.copy_(state[key])
    model.eval().requires_grad_(False)
    return model, {"lpips_backbone_sha256": file_sha256(path), "lpips_heads_sha256": file_sha256(_heads_path()),
                   "lpips_version": "0.1-alex"}


def _prepare(images: torch.Tensor, min_size: int) -> torch.Tensor:
    """uint8 NCHW (or float in [-1, 1]) -> float in [-1, 1], 3 channels, at least ``min_size`` pixels a side."""
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if min(x.shape[-2:]) < min_size:
        scale = min_size / min(x.shape[-2:])
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    return x


def mean_pairwise_lpips(images: torch.Tensor, backbone: Path | str, *, pairs: int = 2000, seed: int = 0,
                        min_size: int = 64, batch_size: int = 100) -> dict[str, Any]:
    """Mean and std of LPIPS(x_i, x_j) over ``pairs`` seeded random pairs i != j (all pairs if fewer)."""
    if len(images) < 2:
        raise ValueError("pairwise LPIPS needs at least 2 samples")
    model, protocol = load_lpips(backbone)
    x = _prepare(images, min_size)
    n = len(x)
    if n * (n - 1) // 2 <= pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, pairs)
        j = (i + rng.integers(1, n, pairs)) % n          # j != i by construction
    d = []
    with torch.no_grad():
        for s in range(0, len(i), batch_size):
            a, b = torch.as_tensor(i[s:s + batch_size]), torch.as_tensor(j[s:s + batch_size])
            d.append(model(x[a], x[b]).flatten())
    d = torch.cat(d).double()
    protocol.update({"lpips_pairs": int(len(d)), "lpips_min_size": int(x.shape[-1]), "lpips_seed": seed})
    return {"mean": float(d.mean()), "std": float(d.std()), "protocol": protocol}
