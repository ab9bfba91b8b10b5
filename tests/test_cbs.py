"""The CBS method end to end on the analytic mixture: aux/exact monitor -> boundaries -> experts -> Piecewise."""
import json
from pathlib import Path

import pytest

from tests.configs import load_in
from harness.pipeline.assemble import method_for
from harness.pipeline.experiment import run_experiment
from harness.pipeline.split import compute_split

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
    from harness.core.errors import ConfigError

    with pytest.raises(ConfigError, match="method.boundaries: 3 experts need 2 interior boundaries"):
        cfg_for(tmp_path, "method=cbs", "method.n=3", "method.boundaries=[0.5]")
    with pytest.raises(ConfigError, match="Unknown monitor 'curvature'"):
        cfg_for(tmp_path, "method=cbs", "method.monitor=curvature")


def test_aux_backbone_is_the_aux_units_network_and_is_checked(tmp_path):
    """Seed 000 Sec. 4.5: the aux model may be a smaller network than the experts."""
    from harness.core.errors import ConfigError
    from harness.pipeline.split import aux_unit

    same = aux_unit(cfg_for(tmp_path, "method=cbs"))
    small = aux_unit(cfg_for(tmp_path, "method=cbs", "split.aux_backbone={name: mlp, width: 16, depth: 2}"))
    assert small.backbone == {"name": "mlp", "width": 16, "depth": 2} and same.backbone["width"] == 128
    assert small.hash != same.hash and small.data == same.data and small.train == same.train
    with pytest.raises(ConfigError, match="split.aux_backbone must be a backbone node with a name"):
        cfg_for(tmp_path, "method=cbs", "split.aux_backbone={depth: 2}")
    with pytest.raises(ConfigError, match="resnet"):
        cfg_for(tmp_path, "method=cbs", "split.aux_backbone={name: resnet}")


FULL_SCALE = [("cbs_sit_xl2_imagenet256", "data.root={d}", 674.8), ("cbs_sit_xl2_imagenet256_cfg", "data.root={d}", 674.8),
              ("cbs_sit_b2_imagenet256", "data.root={d}", 130.3), ("cbs_jit_b4_imagenet64", "data.root={d}", 130.4),
              ("cbs_unet_cifar10", "data.base.root={d}", 35.75)]


@pytest.mark.parametrize("name,root,params_m", FULL_SCALE)
def test_full_scale_cbs_setups_validate_and_count_without_data(tmp_path, name, root, params_m):
    """Seed 000 Tab. 1-3 setups: every expert has the monolithic size; the SiT aux model is SiT-S/2."""
    from harness.pipeline.describe import describe_experiment

    cfg = load_in(tmp_path, f"experiment={name}", root.format(d=tmp_path))
    assert cfg["method"]["name"] == "cbs" and cfg["method"]["n"] == 3 and cfg["method"]["budget"] == "per_expert"
    info = describe_experiment(cfg)
    experts = [r for role, r in info["units"].items() if role.startswith("expert")]
    assert len(experts) == 3 and all(abs(r["params"] / 1e6 - params_m) < 0.1 for r in experts)
    if "sit" in name:
        assert cfg["split"]["aux_backbone"]["hidden_size"] == 384 and cfg["split"]["aux_steps"] == 50000
    if name.endswith("_cfg"):
        assert cfg["guidance"]["name"] == "cfg" and info.get("guidance")


def test_harness_eval_never_trains_cbs_aux_model(tmp_path):
    """``harness eval`` scores trained units only: CBS's prepare step would train the aux model, and is refused
    in one line with nothing trained (no checkpoint of the aux unit is written)."""
    from harness.core.errors import ConfigError
    from harness.pipeline.experiment import evaluate_experiment
    from harness.pipeline.split import aux_unit

    cfg = cfg_for(tmp_path, "method=cbs", "method.n=2", "split.field=aux", "split.aux_steps=20")
    with pytest.raises(ConfigError, match=r"harness eval scores trained units, and unit .* is not trained in"):
        evaluate_experiment(cfg)
    assert not list(aux_unit(cfg).directory(cfg["paths"]["workdir"]).glob("ckpt_*"))
    run_experiment(cfg)                                               # trained by harness run ...
    assert evaluate_experiment(cfg)["units_trained"] == 0             # ... then scored without training


def test_naive_split_and_cbs_default_to_the_same_number_of_experts(tmp_path):
    """Seed 000 compares CBS with the uniform split at equal N (Tab. 1-3): the defaults must not differ (they were
    N = 2 for naive_split, 3 for cbs, so `method=naive_split` vs `method=cbs` compared 2 experts with 3)."""
    from tests.configs import load_in

    naive, cbs = (load_in(tmp_path, f"method={m}")["method"]["n"] for m in ("naive_split", "cbs"))
    assert naive == cbs
