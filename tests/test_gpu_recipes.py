"""benchmarks/gpu_recipes.py: the deadline of a device lease must not throw away a run that has finished
training and is only calibrating or saving."""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_recipes.py"


@pytest.fixture
def gpu_recipes(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real_sleep = time.sleep
    monkeypatch.setattr(module.time, "sleep", lambda s: real_sleep(min(s, 0.2)))  # poll often
    return module


def _fake_training(epochs_logged: int, then_sleep: float):
    """A stand-in for `eyescreen train`: logs some epochs at once, then works on (calibration) and exits."""

    def start(name, args, opts, threads):
        out = opts.out / name
        out.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{e},1.0,0.5\n" for e in range(1, epochs_logged + 1))
        (out / "metrics.csv").write_text("epoch,seconds,val_macro_auc\n" + rows)
        return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({then_sleep})"])

    return start


def _train(gpu_recipes, monkeypatch, tmp_path, epochs_logged):
    monkeypatch.setattr(gpu_recipes, "start", _fake_training(epochs_logged, then_sleep=2.5))
    monkeypatch.setattr(gpu_recipes, "RUNS", [("tiny", ["--epochs", "2"])])
    opts = SimpleNamespace(only=None, set=[], out=tmp_path, deadline=1.0)
    (run,) = gpu_recipes.train_all(opts)
    return run


def test_a_run_past_its_last_epoch_at_the_deadline_is_let_finish(gpu_recipes, monkeypatch, tmp_path):
    run = _train(gpu_recipes, monkeypatch, tmp_path, epochs_logged=2)
    assert run.state == "finished"


def test_a_run_still_training_at_the_deadline_is_stopped(gpu_recipes, monkeypatch, tmp_path):
    run = _train(gpu_recipes, monkeypatch, tmp_path, epochs_logged=1)
    assert run.state == "stopped: deadline after 1/2 epochs"
    assert run.proc.returncode is not None  # the process is gone, not left running
