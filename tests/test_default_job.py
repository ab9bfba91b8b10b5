"""The README's default job, as a newcomer runs it, makes images its metric can tell from an untrained net's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = str(Path(sys.executable).with_name("harness"))


def run(workdir: Path, cache: Path, *overrides: str) -> tuple[float, Path]:
    workdir.mkdir(parents=True)
    env = dict(os.environ, HARNESS_WORKDIR=str(workdir / "out"), HARNESS_CACHE=str(cache))
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([HARNESS, "run", "run.progress=false", *overrides, "--json"], env=env, capture_output=True,
                         text=True, timeout=1800, cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["metrics"]["fd_cnn_fashion_mnist_1k"], Path(result["sample_grid"])


@pytest.mark.slow
def test_the_default_job_scores_far_from_an_untrained_network(tmp_path):
    """Same protocol (classifier, 1000 samples, seeds, reference) for the default run and a 1-step run."""
    trained, grid = run(tmp_path / "default", tmp_path / "cache")
    untrained, _ = run(tmp_path / "untrained", tmp_path / "cache", "train.steps=1")   # the classifier is reused
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and grid.stat().st_size > 10_000
    assert trained < 0.2 * untrained, (trained, untrained)
