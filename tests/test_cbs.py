"""The CBS method end to end on the analytic mixture: aux/exact monitor -> boundaries -> experts -> Piecewise."""
import json
from pathlib import Path

import pytest

from tests.configs import load_in
from harness.experiment import method_for, run_experiment
from harness.split.run import compute_split

BASE = ["experiment=gmm_mini", "run.progress=false", "train.steps=30", "eval.n_samples=200", "eval.reference_n=200"]


def cfg_for(tmp_path, *extra):
    return load_in(tmp_path, *BASE, *extra)


def test_cbs_experts_live_on_the_monitor_boundaries(tmp_path):
    cfg = cfg_for(tmp_path, "method=cbs", "method.n=3", "split.field=exact")
    expected = compute_split(dict(cfg, split=dict(cfg["split"], n=3)))["boundaries"]
    first = run_experiment(cfg)
    assert first["units_trained"] == 3
    method = method_for(cfg)
    assert method.boundaries == expected
    intervals = [u.interval for u in method.units().values()]
    assert intervals == [(0.0, expected[0]), (expected[0], expected[1]), (expected[1], 1.0)]
    again = run_experiment(cfg)
    assert again["units_trained"] == 0 and again["units_reused"] == 3


def test_cbs_with_uniform_boundaries_is_the_naive_split_unit_for_unit(tmp_path):
    """Paired protocol: only the boundaries differ, so equal boundaries give identical units (reused)."""
    cbs = method_for(cfg_for(tmp_path, "method=cbs", "method.n=2", "method.boundaries=[0.5]"))
    naive = method_for(cfg_for(tmp_path, "method=naive_split", "method.n=2"))
    assert [u.hash for u in cbs.units().values()] == [u.hash for u in naive.units().values()]


def test_cbs_bad_boundaries_are_config_errors(tmp_path):
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="method.boundaries: 3 experts need 2 interior boundaries"):
        cfg_for(tmp_path, "method=cbs", "method.n=3", "method.boundaries=[0.5]")
    with pytest.raises(ConfigError, match="Unknown monitor 'curvature'"):
        cfg_for(tmp_path, "method=cbs", "method.monitor=curvature")
