"""CLI of the data layer: ``harness encode [overrides] --vae DIR --out DIR`` (images -> VAE latent shards).

Registered through ``COMMAND_MODULES`` in :mod:`harness.cli`; heavy imports stay inside the command.
The source is the config's ``data`` node, so any dataset composes as in the other commands:
``harness encode data=image_folder data.root=/imagenet/train data.image_size=256 --vae sd-vae-ft-ema --out latents/``
(the SiT/DiT setting) or ``harness encode data=fashion_mnist data.resolution=32 data.channels=3 --vae DIR --out DIR``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable


def cmd_encode(args) -> int:
    from harness.config import load
    from harness.data.encode import encode_to_shards
    from harness.data.vae import VAE

    cfg = load(args.overrides)
    vae = VAE.load(args.vae, scale_factor=args.scale_factor, device=args.device, precision=args.precision)
    summary = encode_to_shards(cfg["data"], vae, Path(args.out), shard_size=args.shard_size, batch_size=args.batch_size,
                               posterior=args.posterior, seed=args.seed, dtype=args.dtype)
    print(json.dumps(summary))
    return 0


def add_commands(sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``encode`` to the ``harness`` parser."""
    sp = add("encode", cmd_encode, "encode the data node's images with a local diffusers AutoencoderKL into latent "
                                   "shards (data=latent_shards data.root=OUT reads them)")
    sp.add_argument("--vae", required=True, help="diffusers AutoencoderKL directory (e.g. a copy of stabilityai/sd-vae-ft-ema)")
    sp.add_argument("--out", required=True, help="directory of shard_*.npz; a re-run skips finished shards")
    sp.add_argument("--scale-factor", type=float, default=None, help="latent scale (default: the VAE config's scaling_factor)")
    sp.add_argument("--posterior", choices=("sample", "mean"), default="sample",
                    help="seeded posterior sample (DiT/SiT, default) or its mean")
    sp.add_argument("--seed", type=int, default=0, help="seed of the posterior samples (per item)")
    sp.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage dtype of the latents")
    sp.add_argument("--shard-size", type=int, default=10_000, help="items per shard")
    sp.add_argument("--batch-size", type=int, default=64, help="images per VAE forward")
    sp.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    sp.add_argument("--precision", choices=("float32", "bfloat16"), default="float32", help="bfloat16 needs CUDA")
