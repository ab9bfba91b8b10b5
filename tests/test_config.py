"""Config validation: bad configs fail in one line naming the key, exit 2, nothing written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import compose, load, options, validate
from harness.core.errors import ConfigError

BAD = [
    (["train.stesp=3"], r"train.stesp: unknown key. Did you mean: steps\?"),
    (["trian.steps=3"], r"trian: unknown key. Did you mean: train\?"),
    (["train.steps=abc"], r"train.steps: expected int, got 'abc'"),
    (["train.steps=-5"], r"train.steps must be > 0"),
    (["train.lr=0"], r"train.lr must be > 0"),
    (["train.ema_decay=1.5"], r"train.ema_decay must be in \[0, 1\)"),
    (["train.amp=maybe"], r"train.amp must be auto, on or off"),
    (["data=fashion_mnst"], r"data=fashion_mnst: unknown data option. Did you mean: fashion_mnist\?"),
    (["method=naive_splt"], r"Did you mean: naive_split\?"),
    (["method=naive_split", "method.n=0"], r"method.n must be >= 1"),
    (["method=naive_split", "method.budget=double"], r"method.budget must be one of per_expert, equal_total"),
    (["method=naive_split", "method.n=two"], r"method.n: expected int"),
    (["eval.metrics=[fid]"], r"eval.metrics: unknown metric 'fid'"),
    (["eval.n_samples=0"], r"eval.n_samples must be > 0"),
    (["objective=ddpm_cosine", "objective.schedule=sigmoid"], r"objective.schedule"),
    (["objective.time_sampler=lognormal"], r"Unknown time_sampler 'lognormal'"),
    (["sampler.steps=0"], r"sampler.steps must be >= 1"),
    (["sampler.steps=1.5"], r"sampler.steps: expected int"),
    (["data=cifar10", "data.root=/nonexistent/cifar-10-batches-py"], r"data.root: /nonexistent/cifar-10-batches-py does not exist"),
    (["data=cifar10"], r"data.root: a value is required"),
    (["+data.colour=3"], r"data.colour: unknown key"),
    (["launcher.name=slurmm"], r"launcher.name: unknown launcher 'slurmm'"),
    (["train.steps"], r"is not KEY=VALUE"),
]


@pytest.mark.parametrize("overrides,pattern", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_is_one_line_config_error(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        load(overrides)
    assert "\n" not in err.value.one_line()


def test_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    env_before = os.environ.get("HARNESS_WORKDIR")
    os.environ["HARNESS_WORKDIR"] = str(tmp_path / "out")
    try:
        code = main(["run", "train.stesp=3"])
    finally:
        if env_before is None:
            os.environ.pop("HARNESS_WORKDIR")
        else:
            os.environ["HARNESS_WORKDIR"] = env_before
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: train.stesp")
    assert not (tmp_path / "out").exists()


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("harness")
    out = subprocess.run([str(exe), "run", "backbone=unet_tny"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: backbone=unet_tny: unknown backbone option. Did you mean: unet_tiny?")
    assert list(tmp_path.iterdir()) == []


def test_default_config_validates_and_overrides_apply():
    cfg = load(["train.steps=7", "method=naive_split", "method.n=3"])
    assert cfg["train"]["steps"] == 7 and cfg["method"] == {"name": "naive_split", "n": 3, "budget": "per_expert",
                                                             "training": "independent"}


def test_every_experiment_composes_and_validates(tmp_path):
    """`harness validate --all` in test form; each required (???) value of a full-scale experiment gets a
    stand-in: a folder for data roots, an existing file for file paths (no ImageNet, DINOv2 or AlexNet here)."""
    import numpy as np
    from omegaconf import OmegaConf

    placeholder = tmp_path / "placeholder.npy"
    np.save(placeholder, np.zeros((2, 4), dtype=np.float32))
    for exp in options("experiment"):
        base = compose([f"experiment={exp}"])
        missing = sorted(OmegaConf.missing_keys(base))
        extra = [f"{k}={tmp_path if k.endswith('root') else placeholder}" for k in missing]
        if "lpips" in base.eval.metrics:
            extra.append(f"eval.lpips_backbone={placeholder}")
        cfg = validate(compose([f"experiment={exp}", *extra]))
        assert cfg["data"]["name"] and cfg["backbone"]["name"]


def test_full_scale_config_is_countable_without_data(tmp_path):
    """SiT-XL/2 on ImageNet latents: DiT/SiT's 675M params and 118.6 GMACs, counted from shapes."""
    from harness.pipeline.describe import describe_experiment

    info = describe_experiment(load(["experiment=sit_xl2_imagenet256", f"data.root={tmp_path}"]))
    unit = info["units"]["model"]
    assert info["data_shape"] == [4, 32, 32] and info["num_classes"] == 1000
    assert abs(unit["params"] / 675e6 - 1) < 0.01 and abs(unit["gmacs"] / 118.6 - 1) < 0.02


def test_plugin_signatures_are_read_along_the_class_hierarchy():
    """HeteroDDM names only its own keys and CBS only its own; DDM's / NaiveSplit's keys still validate,
    and an unknown key is still one line listing every known key of the hierarchy."""
    from harness.config import plugin_signature

    hetero, _, open_kwargs = plugin_signature("method", "hetero_ddm")
    assert {"ddpm_experts", "ddpm_objective", "k", "features", "mixing", "budget", "router_steps"} <= set(hetero)
    assert not open_kwargs
    cbs, _, _ = plugin_signature("method", "cbs")
    assert {"n", "monitor", "boundaries", "budget", "training"} == set(cbs)
    assert cbs["n"].default == 3  # read from NaiveSplit, the class that declares it (seed 000: N = 3)
    load(["experiment=hetero_ddm_fmnist_mini", "method.k=3", "method.budget=equal_total"])
    with pytest.raises(ConfigError, match=r"method\.kk: unknown key\. Did you mean: k\?.*ddpm_experts"):
        load(["experiment=hetero_ddm_fmnist_mini", "+method.kk=3"])
    with pytest.raises(ConfigError, match=r"method\.budget must be one of"):
        load(["method=cbs", "method.budget=nope"])


@pytest.mark.parametrize("overrides,pattern", [
    (["experiment=gmm_mini", "data.weights=[0.2,0.2]"], r"data.weights"),
    (["experiment=gmm_mini", "data.stds=[0.5,-1.0]"], r"data.stds must all be > 0"),
    (["data.resolution=0"], r"data.resolution must be >= 1, got 0"),
    (["data.subset_fraction=1.5"], r"data.subset_fraction must be in \(0, 1\]"),
])
def test_validate_catches_dataset_values_before_the_dataset_is_built(overrides, pattern):
    """What building the dataset would reject is a one-line ConfigError of `harness validate` (issue 16)."""
    with pytest.raises(ConfigError, match=pattern):
        load(overrides)
