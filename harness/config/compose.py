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

from harness.config.schema import SCHEMAS, check_dataclass, check_kwargs
from harness.core.errors import ConfigError
from harness.core.registry import get, registry, suggest

CONF_DIR = Path(__file__).parent.parent / "conf"
GROUPS = ("data", "backbone", "objective", "method", "sampler", "eval", "launcher", "tracking", "experiment", "guidance",
          "split")
# node -> registry kind for plug-in nodes ({name: <key>, **kwargs})
PLUGIN_NODES = {"data": "dataset", "backbone": "backbone", "objective": "objective", "method": "method", "sampler": "sampler",
                "guidance": "guidance"}
# generic transform keys every dataset accepts (harness.data.base.build_dataset)
DATA_GENERIC_KEYS = {"resolution": int | None, "channels": int | None, "subset_fraction": float, "subset_seed": int,
                     "hflip": bool}
# arguments a backbone gets from the data, not from its config node
INJECTED = {"self", "cfg", "in_shape", "num_classes"}


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
    """Parameters and type hints of the registered object (its __init__ for classes).

    A class whose ``__init__`` takes ``**kwargs`` and passes them up accepts its bases' keywords too,
    so the signature is read along the class hierarchy until an ``__init__`` without ``**kwargs``
    (a subclass such as ``HeteroDDM`` or ``CBS`` names only its own keys).  The first definition of a key
    wins, so a subclass may change a default.  ``open_kwargs``: the chain ends in ``**kwargs``.
    """
    obj = get(kind, name)
    targets = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c) and c is not object] if inspect.isclass(obj) else [obj]
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    open_kwargs = False
    for target in targets:
        sig = inspect.signature(target)
        try:
            own_hints = typing.get_type_hints(target)
        except Exception:
            own_hints = {}
        for k, p in sig.parameters.items():
            if k in INJECTED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or k in params:
                continue
            params[k] = p
            if k in own_hints:
                hints[k] = own_hints[k]
        open_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        if not open_kwargs:
            break
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


def config_nodes() -> dict[str, type]:
    """Root nodes with a schema: the engine's (train, eval, ...) and those plug-ins register (``split``)."""
    nodes = dict(SCHEMAS)
    for key in registry("config_node").keys():
        nodes[key] = registry("config_node").get(key)
    return nodes


def validate(cfg: Any) -> dict[str, Any]:
    """Validate a composed config; return it as a plain dict. Raises one-line ConfigError."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    nodes = config_nodes()
    allowed = set(GROUPS) - {"experiment"} | set(nodes)
    for key in plain:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown top-level key.{suggest(key, allowed)} Known: {', '.join(sorted(allowed))}")
    for key, cls in nodes.items():
        check_dataclass(key, plain.get(key) or {}, cls)
    for node_name, kind in PLUGIN_NODES.items():
        check_plugin_node(node_name, kind, plain[node_name])
    check_data_root(plain["data"])
    check_data_params(plain["data"])
    check_ffn_params(plain["backbone"])
    check_text_data(plain)
    check_exact_metric_data(plain)
    for node_name in ("method", "guidance", "sampler"):  # cross-key invariants, through the registry (the engine names no plug-in)
        node = plain.get(node_name)
        check = getattr(get(PLUGIN_NODES[node_name], node["name"]), "check_config", None) if node else None
        if check is not None:
            check(plain)
    _instantiate_light(plain)
    if plain["eval"].get("extractor"):
        get("extractor", plain["eval"]["extractor"])
    return plain


def check_text_data(plain: Mapping[str, Any]) -> None:
    """A text backbone (``backbone.text_dim``) needs a dataset that yields caption embeddings (its factory says
    ``yields_captions``), and a caption twin that states its width must state the backbone's (seed 003 Eq. 18)."""
    backbone, data = plain.get("backbone") or {}, plain.get("data") or {}
    factory = get("dataset", data["name"]) if data.get("name") else None
    captions = bool(getattr(factory, "yields_captions", False))
    text_dim = backbone.get("text_dim")
    if text_dim is None:
        if captions:
            raise ConfigError(f"data={data['name']} yields caption embeddings, backbone.text_dim is not set",
                              hint="set backbone.text_dim and backbone.text_len to the captions' width and length")
        return
    if not captions:
        raise ConfigError(f"backbone.text_dim={text_dim}: data={data.get('name')} has no caption embeddings",
                          hint="use data.name=captioned (rows + caption shards) or data=fashion_mnist_captioned")
    for key, default in (("text_len", 77), ("text_dim", None)):
        want, got = backbone.get(key, default), data.get(key)
        if got is not None and want is not None and int(got) != int(want):
            raise ConfigError(f"data.{key}={got} but backbone.{key}={want}", hint="set both to the same value")


def check_data_params(data: Mapping[str, Any]) -> None:
    """Values a dataset would reject when built, found before anything runs: the generic keys here, the
    dataset's own through its factory's ``check_params`` (e.g. mixture weights that do not sum to 1)."""
    for key in ("resolution", "channels"):
        if data.get(key) is not None and int(data[key]) < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {data[key]}", hint=f"or data.{key}=null")
    fraction = data.get("subset_fraction")
    if fraction is not None and not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"data.subset_fraction must be in (0, 1], got {fraction}")
    check = getattr(get("dataset", data["name"]), "check_params", None)
    if check is not None:
        check(**{k: v for k, v in data.items() if k != "name" and k not in DATA_GENERIC_KEYS})


def check_ffn_params(backbone: Mapping[str, Any]) -> None:
    """``backbone.ffn_kwargs`` values the FFN would reject when built, found before anything runs: through the
    registered FFN's own ``check_params`` (when it has one; e.g. an unknown EC ``inference_routing``)."""
    name = backbone.get("ffn")
    if not isinstance(name, str) or name not in registry("ffn").keys():
        return
    check = getattr(get("ffn", name), "check_params", None)
    if check is not None:
        check(**dict(backbone.get("ffn_kwargs") or {}))


def check_exact_metric_data(cfg: Mapping[str, Any]) -> None:
    """``eval.metrics`` nll / velocity_error need a dataset with a closed form (its factory's ``closed_form``)."""
    asked = [m for m in cfg["eval"].get("metrics") or [] if m in ("nll", "velocity_error")]
    if asked and not getattr(get("dataset", cfg["data"]["name"]), "closed_form", False):
        raise ConfigError(f"eval.metrics: {', '.join(asked)} need data with a closed-form density and velocity; "
                          f"data={cfg['data']['name']} has none", hint="use data=gaussian_mixture, or drop them")
    if "nll" in asked and cfg["eval"].get("extractor") != "raw":
        raise ConfigError("eval.metrics: nll scores the samples' coordinates, so it needs eval.extractor=raw",
                          hint="use eval=fd_raw")


def check_data_root(data: Mapping[str, Any]) -> None:
    """``data.root`` must exist, unless the dataset writes that directory itself (``creates_root(path)``
    on its factory: the CIFAR-10-format stand-in in the harness cache)."""
    root = data.get("root")
    if not root or Path(str(root)).expanduser().exists():
        return
    creates_root = getattr(get("dataset", data["name"]), "creates_root", None)
    if creates_root is None or not creates_root(Path(str(root))):
        raise ConfigError(f"data.root: {root} does not exist", hint="point data.root at the dataset directory")


def _instantiate_light(plain: Mapping[str, Any]) -> None:
    """Build the cheap plug-ins (objective, sampler) through the registry so their own value checks run now.

    Their keys were already checked against the registered signatures by :func:`check_plugin_node`.
    """
    for node_name in ("objective", "sampler"):
        node = plain[node_name]
        get(PLUGIN_NODES[node_name], node["name"])(**{k: v for k, v in node.items() if k != "name"})


def load(overrides: Iterable[str] = ()) -> dict[str, Any]:
    """compose + validate: the one entry point commands use."""
    return validate(compose(list(overrides)))


def hydra_value(value: Any) -> str:
    """A Python value as Hydra override syntax: None -> null, True -> true, [a, b] -> [a,b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return repr(value)
    return str(value)
