"""One config tree (Hydra compose API behind our own CLI) and validation before anything runs.

``compose(overrides)`` builds the resolved config; ``validate(cfg)`` checks every node:
unknown keys (with a did-you-mean), wrong types and impossible values become one
:class:`ConfigError` naming the key (exit code 2 in the CLI), before a file is written
(STYLE practice 5).  Plug-in nodes are checked against the signature of the registered
class they name, so the registry is the single source of truth (STYLE practice 1).
"""
from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from harness.errors import ConfigError
from harness.registry import get, suggest
from harness.schema import SCHEMAS, check_dataclass, check_kwargs

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("data", "backbone", "objective", "method", "sampler", "eval", "launcher", "tracking", "experiment", "guidance")
# node -> registry kind for plug-in nodes ({name: <key>, **kwargs})
PLUGIN_NODES = {"data": "dataset", "backbone": "backbone", "objective": "objective", "method": "method", "sampler": "sampler",
                "guidance": "guidance"}
# generic transform keys every dataset accepts (harness.data.base.build_dataset)
DATA_GENERIC_KEYS = {"resolution": int | None, "channels": int | None, "subset_fraction": float, "subset_seed": int}
# arguments a backbone gets from the data, not from its config node
INJECTED = {"self", "cfg", "in_shape", "num_classes"}
CONFIG_VERSION = 1  # bump when a key changes meaning; stored with every unit and checkpoint


def options(group: str, hidden: bool = False) -> list[str]:
    """Config files of one group (the names ``group=NAME`` accepts); ``_templates`` only if ``hidden``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if hidden or not p.stem.startswith("_"))


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    groups, values = [], []
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not KEY=VALUE", hint="e.g. train.steps=200 or data=mnist")
        key = ov.split("=", 1)[0].lstrip("+~")
        (groups if key in GROUPS else values).append(ov)
    return groups, values


def _compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as err:  # Hydra's own errors are multi-line; keep the first line
        if isinstance(err, ConfigError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"config: {first}") from None


def _lookup(cfg: Any, dotted: str) -> tuple[bool, Any, str]:
    """(found, deepest existing node, missing part) for a dotted key."""
    from omegaconf import DictConfig

    node = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in list(node.keys()):
            return False, node, ".".join(parts[: i + 1])
        node = node._get_node(part)  # no interpolation resolution needed here
    return True, node, ""


def compose(overrides: Sequence[str] = ()) -> Any:
    """Compose the root config with ``overrides``; unknown groups/options/keys raise ConfigError."""
    from omegaconf import DictConfig, OmegaConf

    group_ovr, value_ovr = _split_overrides(overrides)
    for ov in group_ovr:
        group, option = ov.lstrip("+~").split("=", 1)
        known = options(group)
        if option not in options(group, hidden=True) and option != "null":
            raise ConfigError(f"{group}={option}: unknown {group} option.{suggest(option, known)} Available: {', '.join(known)}")
    base = _compose(group_ovr)
    for ov in value_ovr:
        if ov.startswith("+"):
            continue  # explicit additions are checked by validate()
        key = ov.lstrip("~").split("=", 1)[0]
        found, parent, missing = _lookup(base, key)
        if not found:
            known = list(parent.keys()) if isinstance(parent, DictConfig) else []
            last = missing.rsplit(".", 1)[-1]
            raise ConfigError(f"{missing}: unknown key.{suggest(last, known)} Known here: {', '.join(map(str, known))}")
    cfg = _compose([*group_ovr, *value_ovr])
    try:
        OmegaConf.resolve(cfg)
    except Exception as err:
        raise ConfigError(f"config: cannot resolve an interpolation: {str(err).splitlines()[0]}") from None
    return cfg


def plugin_signature(kind: str, name: str) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Parameters and type hints of the registered object (its __init__ for classes)."""
    obj = get(kind, name)
    target = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    params = {k: p for k, p in sig.parameters.items() if k not in INJECTED
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return params, hints, open_kwargs


def check_plugin_node(node_name: str, kind: str, node: Mapping[str, Any]) -> None:
    """Check one ``{name: ..., **kwargs}`` node against its registered signature."""
    if "name" not in node:
        raise ConfigError(f"{node_name}.name is missing", hint=f"pick one with {node_name}=OPTION")
    kwargs = {k: v for k, v in node.items() if k != "name"}
    params, hints, open_kwargs = plugin_signature(kind, node["name"])
    if node_name == "data":
        for k, h in DATA_GENERIC_KEYS.items():
            params.setdefault(k, inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None))
            hints.setdefault(k, h)
    if open_kwargs:
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    check_kwargs(node_name, kwargs, params, hints)
    required = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if required:
        raise ConfigError(f"{node_name}.{required[0]}: a value is required for {node['name']!r}")


def validate(cfg: Any) -> dict[str, Any]:
    """Validate a composed config; return it as a plain dict. Raises one-line ConfigError."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    allowed = set(GROUPS) - {"experiment"} | set(SCHEMAS)
    for key in plain:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown top-level key.{suggest(key, allowed)} Known: {', '.join(sorted(allowed))}")
    for key, cls in SCHEMAS.items():
        check_dataclass(key, plain.get(key) or {}, cls)
    for node_name, kind in PLUGIN_NODES.items():
        check_plugin_node(node_name, kind, plain[node_name])
    root = plain["data"].get("root")
    if root and not Path(str(root)).expanduser().exists() and not _writes_itself(Path(str(root))):
        raise ConfigError(f"data.root: {root} does not exist", hint="point data.root at the dataset directory")
    method_cls = get("method", plain["method"]["name"])
    check = getattr(method_cls, "check_config", None)
    if check is not None:
        check(plain)
    from harness.guidance import check_guidance_config

    check_guidance_config(plain)  # gamma ranges, AG's weak model, labels for CFG (seed 004)
    _instantiate_light(plain)
    if plain["eval"].get("extractor"):
        get("extractor", plain["eval"]["extractor"])
    return plain


def _writes_itself(root: Path) -> bool:
    """The CIFAR-10-format stand-in's directory is written by its loader on first use."""
    from harness.data.cifar10 import STANDIN_PARENT

    return root.name == "cifar-10-batches-py" and root.parent.name == STANDIN_PARENT


def _instantiate_light(plain: Mapping[str, Any]) -> None:
    """Build the cheap plug-ins (objective, sampler) so their own value checks run before anything else."""
    from harness.objectives import build_objective

    build_objective(plain["objective"])
    node = plain["sampler"]
    get("sampler", node["name"])(**{k: v for k, v in node.items() if k != "name"})


def load(overrides: Iterable[str] = ()) -> dict[str, Any]:
    """compose + validate: the one entry point commands use."""
    return validate(compose(list(overrides)))
