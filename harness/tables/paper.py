"""The seeds' numbers, transcribed in ``results/paper/*.yaml`` (DESIGN.md: results/), loaded with file:line errors.

Each file cites one seed text; each table lists entries (row, column, metric, value as the seed prints
it, the seed line it is printed on, the ``match`` our runs must carry, ``paper_scale``) and the protocol
the paper states.  A table whose body the seed lacks has ``status: body_missing`` and no entries: we
never invent numbers.  A malformed entry raises a one-line ConfigError naming the file and line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
STATUSES = ("transcribed", "partial", "body_missing")
ENTRY_KEYS = {"row": str, "column": str, "metric": str, "value": str, "line": int}
OPTIONAL_ENTRY_KEYS = {"match", "paper_scale", "mini_scale", "protocol", "note"}
_NUMBER = re.compile(r"^[+\-−]?\d+(?:\.\d+)?(?:[eE][+\-]?\d+)?$")


def default_paper_dir() -> Path:
    """``results/paper`` of the repository this package runs from, else of the working directory."""
    here = REPO / "results" / "paper"
    return here if here.is_dir() else Path.cwd() / "results" / "paper"


@dataclass(frozen=True)
class PaperEntry:
    """One cell of a seed's table, with where it came from and which of our runs belong beside it."""

    table_id: str
    table: str
    row: str
    column: str
    metric: str          # fid | is | precision | recall | sfid | gflops | ... (see compare.OUR_METRICS)
    value: str           # the seed's own string, e.g. "14.41"
    seed_file: str       # file name under the seeds directory
    seed_line: int       # 1-based line of the seed file that prints ``value``
    source: str          # "results/paper/x.yaml:123" (where this entry is written)
    match: Optional[dict[str, Any]]   # None: nothing we run corresponds (a difference, a prior work's range)
    paper_scale: dict[str, Any] = field(default_factory=dict)
    mini_scale: dict[str, Any] = field(default_factory=dict)   # what a non-paper-scale run must also carry
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> Optional[float]:
        """The value as a float, or None for a non-number (a range such as '5.5–10.5')."""
        text = self.value.strip().replace("−", "-")
        return float(text) if _NUMBER.match(text) else None


@dataclass(frozen=True)
class PaperTable:
    """One table of one seed: its entries, or a note that the seed lacks its body."""

    id: str
    table: str
    title: str
    status: str
    note: str
    source: str
    seed_file: str
    protocol: dict[str, Any]
    entries: tuple[PaperEntry, ...]


class _LineLoader:
    """A yaml SafeLoader whose mappings remember their 1-based line as ``__line__``."""

    @staticmethod
    def load(text: str) -> Any:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        def construct_mapping(loader, node, deep=False):
            mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
            mapping["__line__"] = node.start_mark.line + 1
            return mapping

        Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
        return yaml.load(text, Loader=Loader)


def _strip(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if k != "__line__"}
    if isinstance(d, list):
        return [_strip(v) for v in d]
    return d


def _entry(raw: Any, where: str, table: dict[str, Any], seed_file: str, rel: str) -> PaperEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an entry must be a mapping with keys {', '.join(ENTRY_KEYS)}")
    where = f"{rel}:{raw.get('__line__', '?')}"
    for key, typ in ENTRY_KEYS.items():
        if key not in raw:
            raise ConfigError(f"{where}: entry lacks '{key}'", hint=f"every entry needs {', '.join(ENTRY_KEYS)}")
        if not isinstance(raw[key], typ) or isinstance(raw[key], bool):
            raise ConfigError(f"{where}: entry '{key}' must be {typ.__name__}, got {raw[key]!r}",
                              hint="quote values as the seed prints them, e.g. value: '14.41'")
    unknown = set(raw) - set(ENTRY_KEYS) - OPTIONAL_ENTRY_KEYS - {"__line__"}
    if unknown:
        raise ConfigError(f"{where}: unknown entry key(s) {', '.join(sorted(unknown))}",
                          hint=f"known: {', '.join([*ENTRY_KEYS, *sorted(OPTIONAL_ENTRY_KEYS)])}")
    for key in ("match", "paper_scale", "mini_scale", "protocol"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ConfigError(f"{where}: entry '{key}' must be a mapping of config keys to values (or null)")
    return PaperEntry(table_id=table["id"], table=table["table"], row=raw["row"], column=raw["column"],
                      metric=raw["metric"], value=raw["value"], seed_file=seed_file, seed_line=raw["line"], source=where,
                      match=_strip(raw.get("match")), paper_scale=_strip(raw.get("paper_scale") or {}),
                      mini_scale=_strip(raw.get("mini_scale") or {}),
                      protocol={**_strip(table.get("protocol") or {}), **_strip(raw.get("protocol") or {})})


def load_paper_file(path: Path) -> list[PaperTable]:
    """The tables of one ``results/paper`` file; ConfigError 'file:line: ...' on a malformed entry."""
    import yaml

    path = Path(path).resolve()
    rel = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    try:
        doc = _LineLoader.load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{rel}{line}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(doc, dict) or "seed_file" not in doc or not isinstance(doc.get("tables"), list):
        raise ConfigError(f"{rel}:1: expected a mapping with 'seed_file' and a list 'tables'")
    tables = []
    for t in doc["tables"]:
        where = f"{rel}:{t.get('__line__', '?') if isinstance(t, dict) else '?'}"
        if not isinstance(t, dict) or not all(isinstance(t.get(k), str) for k in ("id", "table", "status")):
            raise ConfigError(f"{where}: a table needs string keys id, table, status")
        if t["status"] not in STATUSES:
            raise ConfigError(f"{where}: status {t['status']!r} is not one of {', '.join(STATUSES)}")
        entries = tuple(_entry(e, where, t, doc["seed_file"], rel) for e in (t.get("entries") or []))
        if t["status"] == "body_missing" and entries:
            raise ConfigError(f"{where}: status body_missing but entries are given", hint="use status: partial")
        tables.append(PaperTable(id=t["id"], table=t["table"], title=str(t.get("title", "")), status=t["status"],
                                 note=str(t.get("note", "")), source=where, seed_file=doc["seed_file"],
                                 protocol=_strip(t.get("protocol") or {}), entries=entries))
    return tables


def load_paper_tables(paper_dir: Optional[Path] = None) -> list[PaperTable]:
    """Every table of every ``*.yaml`` under ``paper_dir``; table ids must be unique."""
    paper_dir = Path(paper_dir) if paper_dir else default_paper_dir()
    files = sorted(paper_dir.glob("*.yaml"))
    if not files:
        raise ConfigError(f"--paper-dir: no *.yaml files in {paper_dir}", hint="point --paper-dir at results/paper")
    tables: list[PaperTable] = []
    seen: dict[str, str] = {}
    for f in files:
        for t in load_paper_file(f):
            if t.id in seen:
                raise ConfigError(f"{t.source}: table id {t.id!r} already used at {seen[t.id]}")
            seen[t.id] = t.source
            tables.append(t)
    return tables


def select_tables(tables: list[PaperTable], name: Optional[str]) -> list[PaperTable]:
    """Tables whose id is ``name`` (all when None); an unknown name suggests the known ones."""
    if name is None:
        return tables
    chosen = [t for t in tables if t.id == name]
    if not chosen:
        from harness.core.registry import suggest

        ids = [t.id for t in tables]
        raise ConfigError(f"--table: unknown table {name!r}.{suggest(name, ids)} Known: {', '.join(ids)}")
    return chosen
