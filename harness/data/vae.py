"""A local diffusers ``AutoencoderKL`` (SD-VAE) with its identity: what turns images into latents and back.

Why: SiT, DiT and DiffMoE train on ``vae.encode(x).latent_dist.sample() * 0.18215`` of 256x256
ImageNet images (4x32x32 latents; SD-VAE ft-EMA / ft-MSE, ``stabilityai/sd-vae-ft-*``) and decode
samples with the same VAE before FID.  Latents are only comparable under the VAE that made them, so
a VAE is always carried with its identity (:class:`VAEIdentity`): the directory, a SHA-256 over its
config and weights files (names relative, so a copy elsewhere has the same hash), the scale factor
(the config's ``scaling_factor``, else an explicit value), latent channels and downsampling factor.

Conventions (DiT/SiT): ``encode(images) = z * scale`` and ``decode(latents) = vae.decode(latents / scale)``,
images float32 in [-1, 1], ``(N, C, H, W)``.  ``encode`` takes the posterior mean or a seeded posterior
sample, ``mean + std * eps``; the papers (fast-DiT's ``extract_features.py``) sample, so
``posterior="sample"`` is the default, with ``eps`` drawn per item from a generator seeded by
``(seed, item index)``: the latents of an item depend neither on the batch size nor on the shard it lies in.

Everything runs under ``torch.no_grad()`` on a given device in float32; ``precision="bfloat16"`` (CUDA
only) runs the VAE in bf16 and returns float32, about twice as fast for encoding ImageNet.  bf16 keeps
float32's range, so the SD-VAE overflow that diffusers' ``force_upcast`` guards against in float16 does
not occur; its 8-bit mantissa changes latents by ~1e-2, which is why float32 is the default and the
precision is part of an encoding's identity.  Nothing is ever downloaded (``local_files_only=True``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from harness.core import dist
from harness.core.errors import ConfigError, DataError
from harness.core.files import sha256_file
from harness.core.hashing import derived_seed

SD_VAE_SCALE = 0.18215  # LDM's SD-VAE latent scale, used by DiT/SiT (and diffusers' AutoencoderKL default)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
POSTERIORS = ("sample", "mean")
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HINT = ("expected a directory written by diffusers' AutoencoderKL.save_pretrained (config.json + "
        "diffusion_pytorch_model.safetensors), e.g. a local copy of stabilityai/sd-vae-ft-ema; nothing is downloaded")


def vae_files(path: Path) -> list[Path]:
    """The files that make a VAE: ``config.json`` and the weights files beside it."""
    if not path.is_dir():
        raise DataError(f"VAE directory {path} does not exist", hint=HINT)
    weights = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not (path / "config.json").is_file() or not weights:
        raise DataError(f"{path} holds no diffusers VAE (config.json and a .safetensors/.bin weights file)", hint=HINT)
    return [path / "config.json", *weights]


def vae_sha256(path: str | Path) -> str:
    """SHA-256 over ``name:sha256`` of the config and weights files (memoised per process by size and mtime)."""
    lines = [f"{p.name}:{sha256_file(p, memo=True)}\n" for p in vae_files(Path(path).expanduser())]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class VAEIdentity:
    """What latents depend on, read from the directory without loading the model."""

    path: str
    sha256: str
    scale_factor: float
    latent_channels: int
    image_channels: int
    downsample: int

    @classmethod
    def of(cls, path: str | Path, scale_factor: Optional[float] = None) -> "VAEIdentity":
        """Identity of the VAE in ``path``; ``scale_factor`` overrides the config's ``scaling_factor``."""
        p = Path(path).expanduser().resolve()
        sha = vae_sha256(p)
        try:
            config = json.loads((p / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{p / 'config.json'} is not readable JSON: {err}", hint=HINT) from None
        if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise DataError(f"{p} holds a diffusers {config['_class_name']}, not an AutoencoderKL", hint=HINT)
        if config.get("shift_factor") is not None or config.get("latents_mean") is not None:
            raise DataError(f"{p}: this VAE normalises latents with shift_factor/latents_mean, which the harness does not "
                            "apply", hint="use an SD-VAE (stabilityai/sd-vae-ft-ema or ft-mse), whose latents are z * scale")
        scale = float(scale_factor if scale_factor is not None else config.get("scaling_factor", SD_VAE_SCALE))
        if scale <= 0:
            raise ConfigError(f"VAE scale factor must be > 0, got {scale}")
        return cls(path=str(p), sha256=sha, scale_factor=scale, latent_channels=int(config.get("latent_channels", 4)),
                   image_channels=int(config.get("out_channels", 3)),
                   downsample=2 ** (len(config.get("block_out_channels", (64,))) - 1))

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, H, W) of the latent of an image of ``image_shape``; the image must fit the VAE."""
        c, h, w = image_shape
        if c != self.image_channels:
            raise ConfigError(f"images have {c} channel(s) but the VAE in {self.path} expects {self.image_channels}",
                              hint=f"add data.channels={self.image_channels}")
        if h % self.downsample or w % self.downsample:
            raise ConfigError(f"images are {h}x{w}, not a multiple of the VAE's downsampling factor {self.downsample}",
                              hint=f"set data.resolution to a multiple of {self.downsample}")
        return self.latent_channels, h // self.downsample, w // self.downsample

    def image_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, H, W) of the image a latent of ``latent_shape`` decodes to."""
        c, h, w = latent_shape
        if c != self.latent_channels:
            raise DataError(f"latents have {c} channels but the VAE in {self.path} makes {self.latent_channels}",
                            hint="point data.vae at the VAE that encoded these latents")
        return self.image_channels, h * self.downsample, w * self.downsample

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class VAE:
    """A loaded AutoencoderKL: batched ``encode`` / ``decode`` under ``no_grad`` on one device."""

    def __init__(self, model: torch.nn.Module, identity: VAEIdentity, device: torch.device, precision: str) -> None:
        self.model, self.identity, self.device, self.precision = model, identity, device, precision

    @classmethod
    def load(cls, path: str | Path, *, scale_factor: Optional[float] = None, device: str = "cpu",
             precision: str = "float32") -> "VAE":
        """``AutoencoderKL.from_pretrained(path, local_files_only=True)`` in eval mode on ``device``."""
        identity = VAEIdentity.of(path, scale_factor)
        dev = dist.resolve_device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"VAE precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "float32" and dev.type != "cuda":
            raise ConfigError(f"VAE precision {precision} needs a CUDA device, got {dev}", hint="use precision float32 on CPU")
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise DataError("diffusers is not installed", hint="pip install diffusers==0.42.1 (pyproject pins it)") from None
        try:
            model = AutoencoderKL.from_pretrained(identity.path, local_files_only=True, low_cpu_mem_usage=False,
                                                  torch_dtype=PRECISIONS[precision])
        except (OSError, ValueError, RuntimeError) as err:
            raise DataError(f"cannot load a diffusers AutoencoderKL from {identity.path}: {str(err).splitlines()[0]}",
                            hint=HINT) from None
        model = model.to(dev).eval().requires_grad_(False)
        return cls(model, identity, dev, precision)

    def _batches(self, x: torch.Tensor, batch_size: int, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunk = x[start:start + batch_size].to(self.device, PRECISIONS[self.precision])
                out.append(fn(chunk, start).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def encode(self, images: torch.Tensor, *, posterior: str = "sample", seed: int = 0, first_index: int = 0,
               batch_size: int = 32) -> torch.Tensor:
        """Images (uint8 0..255, or float in [-1, 1]) (N, C, H, W) -> scaled latents float32 ``z * scale``.

        ``posterior="sample"``: ``mean + std * eps``, ``eps`` of item ``first_index + i`` from a generator
        seeded by ``derived_seed("vae-posterior", seed, first_index + i)``; ``"mean"``: the posterior mean.
        """
        if posterior not in POSTERIORS:
            raise ConfigError(f"posterior must be one of {', '.join(POSTERIORS)}, got {posterior!r}")
        x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
        self.identity.latent_shape(tuple(x.shape[1:]))  # channels and size fit the VAE

        def one(chunk: torch.Tensor, start: int) -> torch.Tensor:
            dist = self.model.encode(chunk).latent_dist
            z = dist.mean
            if posterior == "sample":
                shape = tuple(z.shape[1:])
                eps = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
                    derived_seed("vae-posterior", seed, first_index + start + i))) for i in range(len(chunk))])
                z = z + dist.std * eps.to(z.device, z.dtype)
            return z * self.identity.scale_factor

        return self._batches(x, batch_size, one)

    def decode(self, latents: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
        """Scaled latents (N, C, h, w) -> images float32 in [-1, 1] (clamped), (N, 3, h * f, w * f)."""
        self.identity.image_shape(tuple(latents.shape[1:]))
        return self._batches(latents.float(), batch_size,
                             lambda z, _: self.model.decode(z / self.identity.scale_factor).sample.clamp(-1, 1))


class LatentDecoder:
    """``decoder(latents) -> images in [-1, 1]``, loading its VAE on first use and checking its hash.

    A latent dataset carries one (``ds.decoder``) so evaluation can turn samples into images without
    knowing where the VAE is; training never calls it, so a machine without the VAE can still train.
    ``expected_sha256`` is the hash recorded with the latents (``None`` for shards without metadata).
    """

    def __init__(self, path: Optional[str], *, expected_sha256: Optional[str], scale_factor: float,
                 source: str, device: str = "auto", batch_size: int = 32) -> None:
        self.path, self.expected_sha256, self.scale_factor = path, expected_sha256, float(scale_factor)
        self.source, self.device, self.batch_size = source, device, batch_size
        self._vae: Optional[VAE] = None

    def check(self) -> VAEIdentity:
        """The VAE's identity, after checking that it exists and is the one the latents were made with."""
        if self.path is None:
            raise DataError(f"cannot decode the latents of {self.source}: no VAE is recorded with them and data.vae is not set",
                            hint="set data.vae=DIR (a diffusers AutoencoderKL directory, e.g. stabilityai/sd-vae-ft-ema)")
        identity = VAEIdentity.of(self.path, self.scale_factor)
        if self.expected_sha256 is not None and identity.sha256 != self.expected_sha256:
            raise DataError(f"VAE {identity.path} has SHA-256 {identity.sha256[:12]} but {self.source} was encoded with "
                            f"{self.expected_sha256[:12]}",
                            hint="set data.vae to the VAE that encoded the shards, or re-encode them with harness encode --vae DIR")
        return identity

    def identity(self) -> dict[str, Any]:
        """What evaluation records: the VAE's path, hash and scale factor."""
        ident = self._vae.identity if self._vae is not None else self.check()
        return {"decoder": "diffusers AutoencoderKL", "decoder_path": ident.path, "decoder_sha256": ident.sha256,
                "decoder_scale_factor": ident.scale_factor}

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        if self._vae is None:
            self.check()
            self._vae = VAE.load(self.path, scale_factor=self.scale_factor, device=self.device)
        return self._vae.decode(latents, batch_size=self.batch_size)
