"""Training units: content-hashed (backbone, objective, interval, data, schedule, seed) -> checkpoint.

A unit's identity is the SHA-256 of exactly the inputs that determine its weights
(DESIGN.md; STYLE practice 9), so identical units are trained once and reused, and a
boundary sweep retrains only the experts whose interval moved.  Keys that do not change
the weights (logging, checkpoint cadence, progress bars) are left out of the hash.  A unit
initialised from a checkpoint (``backbone.init_from``) is identified by that file's bytes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from harness.core.errors import ConfigError
from harness.core.files import sha256_file
from harness.core.hashing import content_hash
from harness.core.versions import CONFIG_VERSION, HASH_VERSION

# keys that change how or where a unit trains, not its weights (up to float rounding of batched kernels):
# logging and checkpoint cadence, the device, gradient-accumulation rounds, torch.compile, DataLoader workers
NON_WEIGHT_TRAIN_KEYS = ("checkpoint_every", "keep_checkpoints", "log_every", "device", "batch_gpu", "compile", "workers")
NON_WEIGHT_BACKBONE_KEYS = ("checkpointing",)   # activation checkpointing recomputes the same forward
NON_WEIGHT_DATA_KEYS = ("vae",)   # the decoder of latent shards: checked against the shards, never read by training


@dataclasses.dataclass
class UnitSpec:
    """Everything that determines one trained network."""

    label: str                      # human-readable role, e.g. "expert1/2 [0.5, 1.0)"; not hashed
    data: dict[str, Any]            # data node
    backbone: dict[str, Any]        # backbone node
    objective: dict[str, Any]       # objective node
    train: dict[str, Any]           # train node (non-weight keys are ignored by the hash)
    interval: tuple[float, float] = (0.0, 1.0)  # t range sampled during training (seed 000, Alg. 1)

    def __post_init__(self) -> None:
        """``train.steps=0`` (legal in TrainConfig) trains nothing: only a released model, imported, is such a unit."""
        if int(self.train.get("steps", 1)) == 0 and self.backbone.get("init_from") is None:
            raise ConfigError("train.steps=0 trains nothing: it evaluates a released model, which needs backbone.init_from",
                              hint="set train.steps > 0, or +backbone.init_from=<official DiT/SiT checkpoint>")
        if self.backbone.get("learn_sigma") and self._native_kind() != "eps":
            raise ConfigError(f"backbone.learn_sigma=true: objective={self.objective.get('name')} reads C output channels, "
                              "the variance half is DiT's DDPM variance (eps objectives only)",
                              hint="set backbone.learn_sigma=false (SiT's release drops the variance half), or objective=ddpm_*")
        self._check_transfer_keys()

    def _check_transfer_keys(self) -> None:
        """Seed 003 Sec. 2.6's keys: a transfer needs a source, and Eq. 21's map is for flow-matching experts only."""
        from harness.backbones.dit_transfer import check_mode

        check_mode(self.backbone.get("init_transfer"))
        if self.backbone.get("init_transfer") is not None and self.backbone.get("init_from") is None:
            raise ConfigError("backbone.init_transfer is set but backbone.init_from is not: nothing to transfer from",
                              hint="set backbone.init_from=<a DDPM DiT checkpoint: ours (ckpt_*.pt) or official>")
        if self.backbone.get("time_map") is not None and self._native_kind() != "velocity":
            raise ConfigError(f"backbone.time_map={self.backbone['time_map']}: Eq. 21 maps a flow-matching expert's t "
                              f"to a DDPM step; objective={self.objective.get('name')} feeds its own time "
                              "(a DDPM expert's tau is already DiT's step / 1000)",
                              hint="drop backbone.time_map for DDPM experts (seed 003 Eq. 21, second case)")

    def _native_kind(self) -> str:
        from harness.objectives import build_objective

        return build_objective(self.objective).parameterisation.kind

    def identity(self) -> dict[str, Any]:
        train = {k: v for k, v in self.train.items() if k not in NON_WEIGHT_TRAIN_KEYS}
        backbone = backbone_identity(self.backbone)
        data = {k: v for k, v in self.data.items() if k not in NON_WEIGHT_DATA_KEYS
                and not (k == "hflip" and not v)}   # hflip=false trains what no hflip key trains
        return {"hash_version": HASH_VERSION, "config_version": CONFIG_VERSION, "data": data,
                "backbone": backbone, "objective": objective_identity(self.objective), "train": train,
                "interval": [float(self.interval[0]), float(self.interval[1])]}

    @property
    def hash(self) -> str:
        return content_hash(self.identity())

    def directory(self, workdir: Path | str) -> Path:
        return Path(workdir) / "units" / self.hash

    def to_dict(self) -> dict[str, Any]:
        return dict(self.identity(), label=self.label, hash=self.hash)


def objective_identity(node: Mapping[str, Any], *, sampling_keys: bool = False) -> dict[str, Any]:
    """The objective node as hashed: the objective class's ``UNHASHED_KEYS`` (sampling-time answers) dropped,
    and its ``HASHED_UNLESS_DEFAULT`` keys dropped where they hold their default (units trained before the
    key existed keep their hashes).  ``sampling_keys=True`` keeps the ``UNHASHED_KEYS`` (a cell's result
    depends on them)."""
    from harness.core.registry import get

    try:
        cls = get("objective", node.get("name"))
    except Exception:   # noqa: BLE001 - an unknown objective is reported by validation; hash it whole
        return dict(node)
    unhashed = () if sampling_keys else getattr(cls, "UNHASHED_KEYS", ())
    defaults = getattr(cls, "HASHED_UNLESS_DEFAULT", {})
    return {k: v for k, v in node.items() if k not in unhashed and not (k in defaults and v == defaults[k])}


def backbone_identity(node: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone node as hashed: keys that change only how it trains dropped, and ``init_from`` replaced by
    ``init_from_sha256``, the file's digest (a moved checkpoint is the same unit, an edited one is not).

    ``init_from: null`` is the seed's initialisation: dropped, so such units hash as before the key existed.
    """
    out = {k: v for k, v in node.items() if k not in NON_WEIGHT_BACKBONE_KEYS and k != "init_from"}
    if node.get("init_from") is not None:
        path = Path(str(node["init_from"])).expanduser()
        if not path.is_file():
            raise ConfigError(f"backbone.init_from: {node['init_from']} does not exist",
                              hint="point it at an official DiT/SiT checkpoint (.pt)")
        out["init_from_sha256"] = sha256_file(path, memo=True)
    return out


def unit_from_config(cfg: Mapping[str, Any], label: str, interval: tuple[float, float] = (0.0, 1.0),
                     **train_overrides: Any) -> UnitSpec:
    """A unit from a validated config with an optional interval and train-key overrides."""
    train = dict(cfg["train"], **train_overrides)
    return UnitSpec(label=label, data=dict(cfg["data"]), backbone=dict(cfg["backbone"]),
                    objective=dict(cfg["objective"]), train=train, interval=(float(interval[0]), float(interval[1])))


def done_record(unit_dir: Path) -> Optional[dict[str, Any]]:
    """The completion record of a finished unit, or None."""
    path = Path(unit_dir) / "done.json"
    return json.loads(path.read_text()) if path.exists() else None
