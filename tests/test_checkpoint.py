"""Checkpoints: atomic, checksummed, weights_only; a killed or failed save never replaces a good one."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from harness.core.errors import CheckpointError
from harness.train.checkpoint import load_checkpoint, load_latest, save_checkpoint, verify


def payload(v: float, n: int = 10):
    return {"model": {"w": torch.full((n,), v)}, "optimizer": {"state": {}, "param_groups": []}}


def save(d, step, v, n=10, keep=3):
    return save_checkpoint(d, step, payload(v, n), config={"a": 1}, config_version=1, keep=keep)


def test_round_trip_is_weights_only_and_keeps_config(tmp_path):
    p = save(tmp_path, 5, 1.5)
    ck = load_checkpoint(p, config_version=1)
    assert ck["step"] == 5 and ck["config"] == {"a": 1} and torch.equal(ck["model"]["w"], torch.full((10,), 1.5))
    torch.load(p, weights_only=True)  # no pickled code inside


def test_prunes_to_keep(tmp_path):
    for s in range(1, 6):
        save(tmp_path, s, float(s), keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_000000004.pt", "ckpt_000000005.pt"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sidecar"])
def test_latest_falls_back_past_a_damaged_checkpoint(tmp_path, damage):
    save(tmp_path, 1, 1.0)
    p2 = save(tmp_path, 2, 2.0)
    if damage == "flip":
        data = bytearray(p2.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p2.write_bytes(bytes(data))
    elif damage == "truncate":
        p2.write_bytes(p2.read_bytes()[:100])
    else:
        p2.with_suffix(".json").unlink()
    with pytest.warns(RuntimeWarning, match="skipping") if damage != "no_sidecar" else _nothing():
        ck = load_latest(tmp_path, config_version=1)
    assert ck["step"] == 1
    if damage != "no_sidecar":
        with pytest.raises(CheckpointError, match="corrupt|truncated") as err:
            load_checkpoint(p2)
        assert str(p2) in err.value.one_line() and "\n" not in err.value.one_line()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_incompatible_config_version_is_a_clear_error(tmp_path):
    p = save(tmp_path, 1, 1.0)
    with pytest.raises(CheckpointError, match="config version 1, this code uses 2"):
        load_checkpoint(p, config_version=2)
    meta = json.loads(p.with_suffix(".json").read_text())
    meta["format_version"] = 99
    p.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99"):
        verify(p)


def test_sigkilled_saves_never_leave_an_unloadable_latest(tmp_path):
    """Kill a process mid-save many times; the newest valid checkpoint always loads."""
    save(tmp_path, 1, 1.0, n=10)
    script = textwrap.dedent(f"""
        import torch, sys
        from harness.train.checkpoint import save_checkpoint
        step = 2
        while True:
            save_checkpoint({str(tmp_path)!r}, step, {{"model": {{"w": torch.full((4_000_000,), float(step))}}}},
                            config={{}}, config_version=1, keep=2)
            step += 1
    """)
    rng = torch.Generator().manual_seed(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", script])
        time.sleep(1.5 + float(torch.rand(1, generator=rng)) * 1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ck = load_latest(tmp_path, config_version=1)
        assert ck is not None
        w = ck["model"]["w"]
        assert bool((w == w[0]).all()) and float(w[0]) == ck["step"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_keeps_previous_checkpoint(tmp_path):
    """A real full filesystem (a 2 MiB tmpfs): the failed save says so and loses nothing."""
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "2m"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root); the disk-full path is untested here")
    try:
        good = save(mnt, 1, 1.0, n=1000)
        with pytest.raises(CheckpointError, match="disk is full") as err:
            save(mnt, 2, 2.0, n=1_000_000)  # 4 MB does not fit
        assert str(good) in err.value.one_line()
        assert sorted(p.name for p in mnt.iterdir()) == ["ckpt_000000001.json", "ckpt_000000001.pt"]
        assert load_latest(mnt, config_version=1)["step"] == 1
    finally:
        subprocess.run(["umount", str(mnt)])
