"""kill -9 in the middle of training, then --resume: the same final weights as a run never killed."""

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from eyescreen.checkpoint import load_state

ARGS = ["--preset", "quick", "--model", "seed-cnn", "--image-size", "40", "--epochs", "8", "--batch-size", "8",
        "--precision", "fp32", "--no-progress"]  # fmt: skip


def command(manifest, out, *extra):
    return [
        sys.executable,
        "-m",
        "eyescreen",
        "train",
        "--data",
        str(manifest),
        "--out",
        str(out),
        *ARGS,
        *extra,
    ]


def run(manifest, out, *extra, env):
    return subprocess.run(
        command(manifest, out, *extra), env=env, capture_output=True, text=True, timeout=1200
    )


def test_kill_9_then_resume_equals_an_uninterrupted_run(synthetic_manifest, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    assert run(synthetic_manifest, tmp_path / "full", env=env).returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        command(synthetic_manifest, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 900  # generous: CI machines can be slow and busy
    while not (out / "resume.pt").exists() and time.time() < deadline:  # wait for the first finished epoch
        time.sleep(0.05)
    assert (out / "resume.pt").exists(), "no epoch finished within the deadline"
    time.sleep(0.05)  # then kill inside the second epoch (or while its state is being written)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_state(out / "resume.pt")["epoch"] < 7, "the run finished before it was killed"
    resumed = run(synthetic_manifest, out, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(tmp_path / "full" / "last.safetensors"), load_file(out / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.glob(".*.tmp"))  # no half-written checkpoint left behind
