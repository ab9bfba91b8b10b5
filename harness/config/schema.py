"""Typed schemas of the non-plug-in config nodes, and type checking against annotations.

Plug-in nodes (data, backbone, objective, method, sampler, guidance) are checked against
the signature of what they name in the registry (:mod:`harness.config.compose`); the engine's
other nodes have a dataclass here, and a plug-in may register one for a node of its own
(registry kind ``config_node``: the ``split`` node of :mod:`harness.split.config`).  Every check raises a one-line :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
import inspect
import re
import types
import typing
from urllib.parse import urlparse
from typing import Any, Mapping, Optional, Sequence, Union

from harness.core.errors import ConfigError
from harness.core.registry import registry, suggest


def type_ok(value: Any, hint: Any) -> bool:
    """Whether a plain (container-converted) config value fits a type annotation."""
    if hint is inspect.Parameter.empty or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False
        if args and args[-1] is not Ellipsis and origin is not tuple:
            return all(type_ok(v, args[0]) for v in value)
        if args and origin is tuple and args[-1] is Ellipsis:
            return all(type_ok(v, args[0]) for v in value)
        return True
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict,):
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_kwargs(prefix: str, kwargs: Mapping[str, Any], params: Mapping[str, inspect.Parameter],
                 hints: Mapping[str, Any]) -> None:
    """Unknown keys (with a did-you-mean), wrong types and missing required values."""
    for key, value in kwargs.items():
        if key not in params:
            raise ConfigError(f"{prefix}.{key}: unknown key.{suggest(key, params)} Known: {', '.join(sorted(params))}")
        if value == "???":
            raise ConfigError(f"{prefix}.{key}: a value is required", hint=f"pass {prefix}.{key}=...")
        hint = hints.get(key, inspect.Parameter.empty)
        if not type_ok(value, hint):
            raise ConfigError(f"{prefix}.{key}: expected {type_name(hint)}, got {value!r} ({type(value).__name__})")


def check_dataclass(prefix: str, node: Mapping[str, Any], cls: type) -> Any:
    """Check ``node`` against dataclass ``cls`` and return an instance (whose ``check`` runs)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = {name: inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in fields}
    hints = typing.get_type_hints(cls)
    check_kwargs(prefix, node, params, hints)
    obj = cls(**node)
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)
    return obj


def positive(prefix: str, **values: float) -> None:
    for key, v in values.items():
        if v <= 0:
            raise ConfigError(f"{prefix}.{key} must be > 0, got {v}")


@dataclasses.dataclass
class TrainConfig:
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: Optional[float] = None   # fixed-decay EMA (DiT/SiT's 0.9999); null or 0: off (use ema_std)
    ema_std: Optional[list[float]] = None  # EDM2 power-function EMA profiles (sigma_rel), e.g. [0.05, 0.10]
    ema_snapshots: int = 8              # snapshots of every profile over training, for post-hoc EMA (eval.ema_std)
    seed: int = 0
    label_dropout: float = 0.1
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 50
    amp: str = "auto"
    device: str = "auto"
    batch_gpu: Optional[int] = None   # per-GPU accumulation round (EDM2's batch_gpu); None = the whole per-GPU batch
    compile: bool = False             # torch.compile the training forward
    workers: int = 0                  # DataLoader worker processes; 0 = fetch in the training process

    def check(self, p: str) -> None:
        positive(p, batch_size=self.batch_size, lr=self.lr, checkpoint_every=self.checkpoint_every,
                 keep_checkpoints=self.keep_checkpoints, log_every=self.log_every)
        if self.steps < 0:  # 0 evaluates a released model as imported; UnitSpec requires backbone.init_from for it
            raise ConfigError(f"{p}.steps must be > 0, got {self.steps} (0 only with backbone.init_from: a released model)")
        if self.batch_gpu is not None and self.batch_gpu <= 0:
            raise ConfigError(f"{p}.batch_gpu must be > 0 or null, got {self.batch_gpu}")
        if self.workers < 0:
            raise ConfigError(f"{p}.workers must be >= 0, got {self.workers}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError(f"{p}.warmup_steps, grad_clip and weight_decay must be >= 0")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{p}.ema_decay must be in [0, 1), got {self.ema_decay}")
        check_ema_stds(f"{p}.ema_std", self.ema_std or [])
        if self.ema_std and self.ema_decay:
            raise ConfigError(f"{p}.ema_decay={self.ema_decay} and {p}.ema_std={self.ema_std}: choose one EMA",
                              hint=f"set {p}.ema_std=null for a fixed decay (the papers' 0.9999), or {p}.ema_decay=null")
        if self.ema_snapshots < 1:
            raise ConfigError(f"{p}.ema_snapshots must be >= 1, got {self.ema_snapshots}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"{p}.label_dropout must be in [0, 1), got {self.label_dropout}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{p}.betas must be two numbers in [0, 1), got {self.betas}")
        if self.amp not in ("auto", "on", "off"):
            raise ConfigError(f"{p}.amp must be auto, on or off, got {self.amp!r}")
        check_device(p, self.device)


def check_ema_stds(key: str, stds: Sequence[float]) -> None:
    """EDM2's sigma_rel lies in (0, 0.2887): 0.2887 = sqrt(1/12) is the flat average (exponent 0)."""
    bad = [s for s in stds if not 0.0 < float(s) < 0.2886]
    if bad:
        raise ConfigError(f"{key}: every sigma_rel must lie in (0, 0.2886), got {bad[0]}",
                          hint="EDM2 uses 0.05 and 0.10 (relative EMA lengths); 0.2887 would average all of training")


def check_device(p: str, device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"{p}.device must be auto, cpu, cuda or cuda:N, got {device!r}")


@dataclasses.dataclass
class EvalConfig:
    extractor: Optional[str] = "smallcnn"
    extractor_kwargs: dict = dataclasses.field(default_factory=dict)
    n_samples: int = 256
    reference_split: str = "test"
    reference_n: int = 1000
    metrics: list[str] = dataclasses.field(default_factory=list)
    batch_size: int = 128
    seed_offset: int = 0
    class_label: Optional[int] = None
    reference: Optional[str] = None     # ADM-format npz (arr_0 and/or mu, sigma) instead of the data's split
    fd_backend: str = "harness"         # harness (scipy) | torch-fidelity | clean-fid: whose FD function
    lpips_backbone: Optional[str] = None  # torchvision AlexNet weights file; needed by metrics: [lpips] (seed 003)
    lpips_pairs: int = 2000             # random sample pairs of the mean pairwise LPIPS / div
    device: str = "auto"                # sampling and feature extraction: auto = this process's GPU, else CPU
    ema_std: Optional[float] = None     # sampled EMA (sigma_rel); null = the last train.ema_std profile; others post hoc

    def check(self, p: str) -> None:
        positive(p, n_samples=self.n_samples, batch_size=self.batch_size)
        if self.ema_std is not None:
            check_ema_stds(f"{p}.ema_std", [self.ema_std])
        check_device(p, self.device)
        if self.fd_backend not in ("harness", "torch-fidelity", "clean-fid"):
            raise ConfigError(f"{p}.fd_backend must be harness, torch-fidelity or clean-fid, got {self.fd_backend!r}")
        if self.reference is not None and not Path(self.reference).expanduser().exists():
            raise ConfigError(f"{p}.reference: {self.reference} does not exist", hint="expected an ADM-format npz")
        if self.reference_n < 0 or self.seed_offset < 0:
            raise ConfigError(f"{p}.reference_n and seed_offset must be >= 0")
        known = ["fd", "kid", "pr", "is", "sfid", "div", "lpips", "nll", "velocity_error", "heldout_fm",
                 "caption_class_accuracy"]   # nll, velocity_error: evaluate/exact.py; heldout_fm: evaluate/heldout.py
        bad = [m for m in self.metrics if m not in known]
        if bad:
            raise ConfigError(f"{p}.metrics: unknown metric {bad[0]!r}.{suggest(bad[0], known)} Known: {', '.join(known)}")
        positive(p, lpips_pairs=self.lpips_pairs)
        if "lpips" in self.metrics and self.lpips_backbone is None:
            raise ConfigError(f"{p}.metrics has lpips but {p}.lpips_backbone is not set",
                              hint="point it at torchvision's alexnet-owt-7be5be79.pth (not downloadable here), "
                                   "or use the feature-space stand-in eval.metrics=[div]")
        if self.lpips_backbone is not None and not Path(self.lpips_backbone).expanduser().is_file():
            raise ConfigError(f"{p}.lpips_backbone: {self.lpips_backbone} does not exist",
                              hint="expected torchvision's AlexNet state dict alexnet-owt-7be5be79.pth")
        if self.metrics and self.extractor is None:
            raise ConfigError(f"{p}.metrics needs {p}.extractor", hint="set eval=fd_smallcnn or eval.metrics=[]")
        suite = getattr(registry("extractor").get(self.extractor), "suite", None) if self.extractor else None
        if "sfid" in self.metrics and suite != "adm":
            raise ConfigError(f"{p}.metrics has sfid, which only the ADM suite computes (Inception's mixed_6 features)",
                              hint="set eval=adm (extractor adm_inception)")
        image_metrics = {"kid", "div", "lpips"} & set(self.metrics)
        if suite == "adm" and image_metrics:
            raise ConfigError(f"{p}.metrics: the ADM suite computes fd, sfid, is and pr, not {', '.join(sorted(image_metrics))}",
                              hint="drop them, or score them with eval=fid_inception")
        check = getattr(registry("extractor").get(self.extractor), "check_config", None) if self.metrics and self.extractor else None
        if check is not None:
            check(dataclasses.asdict(self), p)   # e.g. adm_inception: IS needs the softmax weights file


@dataclasses.dataclass
class PathsConfig:
    workdir: str = "harness_out"
    cache: str = "~/.cache/harness"


@dataclasses.dataclass
class RunConfig:
    name: Optional[str] = None
    experiment_name: str = "harness"
    progress: bool = True


@dataclasses.dataclass
class TrackingConfig:
    uri: str = "sqlite:///harness_out/mlflow.db"   # or a tracking server's http(s)://host:port (tracking=server)
    log_git_diff: bool = True

    def check(self, p: str) -> None:
        """A server URI names its scheme and host: MLflow reads ``node1:5000`` as a store of scheme 'node1'."""
        if re.fullmatch(r"[\w.-]+:\d+/?", self.uri):
            raise ConfigError(f"{p}.uri: {self.uri!r} has no scheme", hint=f"a tracking server is http://{self.uri}")
        if self.uri.startswith(("http://", "https://")) and not urlparse(self.uri).hostname:
            raise ConfigError(f"{p}.uri: {self.uri!r} names no host", hint="a tracking server is http://host:port")


@dataclasses.dataclass
class LauncherConfig:
    name: str = "local"
    max_parallel: int = 1             # sweep tasks at once (local subprocesses / SLURM array throttle)
    profile: Optional[str] = None     # SLURM profile: slurm/<profile>.yaml (launcher=slurm only)

    def check(self, p: str) -> None:
        launchers = registry("launcher")
        if self.name not in launchers:
            names = launchers.keys()
            raise ConfigError(f"{p}.name: unknown launcher {self.name!r}.{suggest(self.name, names)} Available: {', '.join(names)}")
        positive(p, max_parallel=self.max_parallel)
        launchers.get(self.name).check_config(self)   # e.g. slurm: the profile exists and parses


SCHEMAS = {"train": TrainConfig, "eval": EvalConfig, "paths": PathsConfig, "run": RunConfig,
           "tracking": TrackingConfig, "launcher": LauncherConfig}
