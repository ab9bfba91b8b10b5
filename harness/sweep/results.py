"""Finished cells of a reported sweep, exported to a committed results file and imported back.

``harness sweep`` writes every finished cell of a sweep that has a ``report:`` into one JSON file under
``results/`` (its ``report.results``) as each cell finishes, and reads it back before planning: a cell
found there is finished on this machine too, so a reproduction resumes on a fresh clone without
re-running what finished, and ``harness table --report`` renders the report from that file alone.

A cell is keyed by its content id (:func:`harness.sweep.spec.cell_id`, the hash of the result-relevant
config), so a cell whose config changed is a new cell and runs again.  The file records the harness's
``PROTOCOL_VERSION``; a file from another version is refused rather than mixed in (its numbers were
obtained another way).  JSON is written with sorted keys and fixed indentation, so a re-export of the
same cells is byte-identical and a git diff shows exactly the cells that changed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

from harness.core.errors import ConfigError
from harness.core.files import write_atomic
from harness.core.versions import PROTOCOL_VERSION
from harness.sweep import state
from harness.sweep.report_spec import report_keys

FORMAT = "harness-sweep-results"
FORMAT_VERSION = 1
MISSING = object()


def lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; ``MISSING`` when a level is absent."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def cell_record(cfg: Mapping[str, Any], result: Mapping[str, Any], keys: list[str], *, delta: Mapping[str, Any],
                overrides: list[str]) -> dict[str, Any]:
    """What the results file keeps of a finished cell: the report's config keys, metrics, protocol, cost."""
    values = {k: v for k in keys if (v := lookup(cfg, k)) is not MISSING}
    return {"keys": values, "delta": dict(delta), "overrides": list(overrides),
            "metrics": dict(result.get("metrics", {})), "protocol": dict(result.get("protocol", {})),
            "cost": dict(result.get("cost") or {}), "method": result.get("method_info") or {},
            "run_id": result.get("run_id"), "seconds": result.get("seconds")}


def read_results(path: Path | str) -> dict[str, dict[str, Any]]:
    """``{cell_id: record}`` of a results file ({} when absent); another format or protocol version is a ConfigError."""
    return dict(read_results_file(path).get("cells") or {})


def read_results_file(path: Path | str) -> dict[str, Any]:
    """The whole results file (format, versions, sweep, base, cells), checked; {} when absent."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})", hint="restore it from git (git checkout -- FILE)") from None
    if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
        raise ConfigError(f"{path}: format: not a harness sweep results file (expected format: {FORMAT})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version: {raw.get('format_version')!r}, this harness reads {FORMAT_VERSION}")
    if str(raw.get("protocol_version")) != PROTOCOL_VERSION:
        raise ConfigError(f"{path}: protocol_version: {raw.get('protocol_version')!r}, this harness scores with protocol "
                          f"{PROTOCOL_VERSION}", hint="its numbers were obtained another way: move the file aside and "
                                                      "re-run the sweep")
    return dict(raw)


def write_results(path: Path, sweep_name: str, base: list[str], cells: Mapping[str, Mapping[str, Any]]) -> Path:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "protocol_version": PROTOCOL_VERSION,
               "sweep": sweep_name, "base": list(base), "cells": dict(cells)}
    text = json.dumps(payload, sort_keys=True, indent=1, default=str) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))
    return path


def results_path(report: Mapping[str, Any]) -> Path:
    return Path(str(report["results"])).resolve()


def export_cell(sweep_dir: Path, cell_id: str, cfg: Mapping[str, Any], result: Mapping[str, Any]) -> Optional[Path]:
    """Add one finished cell to its sweep's results file (the evaluate task calls this as the cell finishes)."""
    record = state.read_json(Path(sweep_dir) / "sweep.json") or {}
    rep = record.get("report")
    if not rep:
        return None
    cell = state.read_json(state.cell_dir(sweep_dir, cell_id) / "cell.json") or {}
    path = Path(rep["results_abs"])
    with state.locked(Path(sweep_dir) / "results-export.lock"):
        cells = read_results(path)
        cells[cell_id] = cell_record(cfg, result, report_keys(rep), delta=cell.get("delta", {}),
                                     overrides=cell.get("overrides", []))
        return write_results(path, record["name"], record.get("base", []), cells)


def export_cells(sweep) -> Optional[Path]:
    """Rewrite the results file from this sweep's cells: finished ones from their records, others kept if exported.

    Cells no longer in the sweep (the file changed) are dropped, so the report shows the sweep as defined.
    """
    rep = sweep.spec.report
    if not rep:
        return None
    path = results_path(rep)
    keys = report_keys(rep)
    with state.locked(sweep.dir / "results-export.lock"):
        old = read_results(path)
        cells = {}
        for cell in sweep.cells:
            res = state.result(sweep.dir, cell.id)
            if res is not None and not res.get("imported_from"):
                cells[cell.id] = cell_record(cell.cfg, res, keys, delta=cell.delta, overrides=cell.overrides)
            elif cell.id in old:
                cells[cell.id] = old[cell.id]
        if not cells and not path.exists():
            return None
        return write_results(path, sweep.spec.name, sweep.spec.base, cells)


def finished_in_results(sweep) -> frozenset[str]:
    """Ids of this sweep's cells that its committed results file holds (what a real run would import)."""
    rep = sweep.spec.report
    if not rep:
        return frozenset()
    exported = read_results(results_path(rep))
    return frozenset(c.id for c in sweep.cells if c.id in exported)


def import_cells(sweep) -> int:
    """Mark cells found in the results file finished in this machine's sweep state; returns how many."""
    rep = sweep.spec.report
    if not rep:
        return 0
    path = results_path(rep)
    exported = read_results(path)
    n = 0
    for cell in sweep.cells:
        rec = exported.get(cell.id)
        if rec is None or state.result(sweep.dir, cell.id) is not None:
            continue
        state.write_cell_record(sweep.dir, cell.to_dict())
        state.record_result(sweep.dir, cell.id, {"cell_id": cell.id, "run_id": rec.get("run_id"), "metrics": rec["metrics"],
                                                 "protocol": rec["protocol"], "cost": rec.get("cost", {}),
                                                 "method_info": rec.get("method", {}), "seconds": rec.get("seconds"),
                                                 "units": {}, "imported_from": str(path)})
        n += 1
    return n


def sweep_record_report(report: Optional[Mapping[str, Any]]) -> Optional[dict[str, Any]]:
    """The report as stored in ``sweep.json``: with the results file's absolute path, for jobs in other directories."""
    if not report:
        return None
    return dict(report, results_abs=str(results_path(report)))


def check_new_cells_join(sweep, finished: frozenset[str]) -> None:
    """Refuse, before anything runs, new cells whose extractor weights differ from those of the results file's cells.

    The report never mixes extractors (:mod:`harness.tables.report`), so cells scored here under other weights
    (a trained extractor retrained on another CPU) would cost their training and then be refused.  Builds each
    distinct extractor the unfinished cells configure, on the CPU, once.
    """
    rep = sweep.spec.report
    todo = [c for c in sweep.cells if c.id not in finished]
    if not rep or not todo:
        return
    path = results_path(rep)
    exported = read_results(path)
    recorded: dict[str, set[str]] = {}
    for rec in exported.values():
        proto = rec.get("protocol") or {}
        recorded.setdefault(str(proto.get("extractor")), set()).add(str(proto.get("weights_sha256")))
    if not recorded:
        return
    import torch

    from harness.evaluate.pipeline import build_extractor

    built: set[str] = set()
    for cell in todo:
        ev = cell.cfg["eval"]
        key = json.dumps([ev.get("extractor"), ev.get("extractor_kwargs")], sort_keys=True, default=str)
        if key in built:
            continue
        built.add(key)
        extractor = build_extractor(cell.cfg, torch.device("cpu"))
        before = recorded.get(extractor.name)
        if before and extractor.weights_sha256 not in before:
            raise ConfigError(
                f"{path}: its cells were scored under {extractor.name} weights {', '.join(sorted(h[:16] for h in before))}, "
                f"this machine's eval.extractor has {extractor.weights_sha256[:16]} ({extractor.weights_source}): "
                f"new cells (e.g. {cell.id}) could not join them in the report",
                hint="score under the recorded weights (ship them: harness/evaluate/weights/), or move the results "
                     "file aside and re-run the whole sweep")
