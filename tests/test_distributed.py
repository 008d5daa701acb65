"""Two CPU processes under torchrun (gloo) train like one process with the same global batch."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from eyescreen.config import preset
from eyescreen.train import train

SETTINGS = dict(model="tiny-cnn", image_size=40, epochs=2, batch_size=8, lr=3e-3, precision="fp32")


def test_two_process_ddp_matches_single_process(synthetic_manifest, tmp_path):
    single = tmp_path / "single"
    train(preset("quick", **SETTINGS), synthetic_manifest, single, progress=False)

    ddp = tmp_path / "ddp"
    overrides = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "eyescreen", "train", "--data", str(synthetic_manifest), "--out", str(ddp),
         "--preset", "quick", "--no-progress", *overrides],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    # both streams: whether training had finished when a process failed says where it failed
    assert result.returncode == 0, f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert '"processes": 2' in (ddp / "run_info.json").read_text()
    assert result.stdout.count("epoch 2/2:") == 1  # only rank 0 reports
    a, b = load_file(single / "last.safetensors"), load_file(ddp / "last.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert (single / "split.csv").read_text() == (ddp / "split.csv").read_text()


def test_under_torchrun_every_process_follows_the_time_budget_of_the_main_one(synthetic_manifest, tmp_path):
    # The main process times the first epoch (with validation, which it alone runs) and decides; were the
    # others to go on to a second epoch on their own, the run would hang in its first all-reduce.
    run = tmp_path / "ddp"
    overrides = [f"--{k.replace('_', '-')}={v}" for k, v in (SETTINGS | {"epochs": 3}).items()]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "eyescreen", "train", "--data", str(synthetic_manifest), "--out", str(run),
         "--preset", "quick", "--no-progress", "--time-budget", "0.0001", *overrides],
        capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.stdout.count("1 of the 3 epochs asked fit") == 1
    assert (run / "metrics.csv").read_text().count("\n") == 2  # the header and the first epoch
