"""benchmarks/gpu_recipes.py, what a short device lease depends on: its deadline must not throw away a run
that has finished training and is only calibrating or saving, and what comes back must be the right
weights, whole."""

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
    # the script polls every 5 s; here every 0.2 s (module.time is the time module: undone after the test)
    monkeypatch.setattr(module.time, "sleep", lambda s: real_sleep(min(s, 0.2)))
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


def _finished_runs(out: Path, aucs: dict[str, float]) -> list[dict]:
    """Run folders holding a small trained-looking checkpoint each, and their summary rows."""
    import torch

    from eyescreen.checkpoint import save_model
    from eyescreen.models import create_model

    rows = []
    for seed, (name, auc) in enumerate(aucs.items()):
        torch.manual_seed(seed)
        model = create_model("tiny-cnn", num_classes=3)
        (out / name).mkdir(parents=True)
        save_model(
            out / name / "best.safetensors",
            model,
            {"model": {"name": "tiny-cnn", "args": {"num_classes": 3}}, "classes": ["a", "b", "c"]},
        )
        rows.append({"run": name, "state": "finished", "best_val_macro_auc": auc})
    return rows


def _reassembled(dest: Path, name: str) -> Path:
    parts = sorted(dest.glob(f"{name}.part*"), key=lambda p: int(p.suffix[len(".part") :]))
    whole = dest / "whole" / name
    whole.parent.mkdir(exist_ok=True)
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    return whole


def test_a_lease_returns_the_best_run_in_fp32_or_every_run_that_fits_in_fp16(
    gpu_recipes, monkeypatch, tmp_path, capsys
):
    import torch

    from eyescreen.checkpoint import load_model

    out, dest = tmp_path / "runs", tmp_path / "packed"
    rows = _finished_runs(out, {"weaker": 0.80, "best": 0.85, "middle": 0.82})
    half = len(gpu_recipes.weights_to_send(out / "best" / "best.safetensors", half=True))
    assert half < (out / "best" / "best.safetensors").stat().st_size <= 2 * half + half // 2
    monkeypatch.setattr(gpu_recipes, "WEIGHTS_LIMIT", 2 * half + half // 2)  # one in fp32, or two at half

    gpu_recipes.pack(rows, SimpleNamespace(out=out, pack=dest, pack_half=False))
    assert {p.name.split(".part")[0] for p in dest.glob("*.part*")} == {"best.best.safetensors"}
    same, _ = load_model(_reassembled(dest, "best.best.safetensors"))
    original, _ = load_model(out / "best" / "best.safetensors")
    assert all(
        torch.equal(a, b)
        for a, b in zip(same.state_dict().values(), original.state_dict().values(), strict=True)
    )

    gpu_recipes.pack(rows, SimpleNamespace(out=out, pack=dest, pack_half=True))
    sent = {p.name.split(".part")[0] for p in dest.glob("*.part*")}
    assert sent == {"best.best.fp16.safetensors", "middle.best.fp16.safetensors"}  # the fp32 copy replaced
    assert "weights of weaker do not fit" in capsys.readouterr().out  # the weakest left behind, and said
    for run in ("best", "middle"):
        half_model, meta = load_model(_reassembled(dest, f"{run}.best.fp16.safetensors"))
        original, _ = load_model(out / run / "best.safetensors")
        assert meta["model"]["name"] == "tiny-cnn"  # the metadata travels with the weights
        for a, b in zip(half_model.state_dict().values(), original.state_dict().values(), strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b.half().to(b.dtype) if b.is_floating_point() else b)


def test_a_both_eye_run_is_summarised_per_eye_like_the_others(gpu_recipes, tmp_path):
    """A both-eye model's evaluation report is per patient, its per-eye one in eyes/: the summary compares
    every run per eye, the issue's unit."""
    import json

    for name, reports in {
        "single": {"": 0.81},
        "both": {"": 0.70, "eyes": 0.83},  # per patient, then per eye
    }.items():
        for sub, auc in reports.items():
            folder = tmp_path / name / "eval-val" / sub
            folder.mkdir(parents=True, exist_ok=True)
            metrics = {"macro_auc": auc, "balanced_accuracy": 0.5}
            (folder / "report.json").write_text(json.dumps({"metrics": metrics, "epoch": 3}))
    runs = [SimpleNamespace(name=n, state="finished", dir=tmp_path / n, epochs=3) for n in ("single", "both")]
    rows = gpu_recipes.summarise(runs, SimpleNamespace(out=tmp_path))
    assert [r["val_macro_auc"] for r in rows] == [0.81, 0.83]


def test_a_taught_run_starts_when_its_teacher_has_finished(gpu_recipes, monkeypatch, tmp_path):
    started = []

    def start(name, args, opts, threads):
        started.append((name, args))
        return _fake_training(2, then_sleep=0.5 if name == "teacher" else 0.1)(name, args, opts, threads)

    monkeypatch.setattr(gpu_recipes, "start", start)
    teach = ["--epochs", "2", "--teacher", "@teacher"]
    monkeypatch.setattr(gpu_recipes, "RUNS", [("teacher", ["--epochs", "2"]), ("student", teach)])
    opts = SimpleNamespace(only=None, set=[], out=tmp_path, deadline=30.0)
    runs = gpu_recipes.train_all(opts)
    assert [r.state for r in runs] == ["finished", "finished"]
    assert [name for name, _ in started] == ["teacher", "student"]  # not side by side: after it
    assert started[1][1] == ["--epochs", "2", "--teacher", str(tmp_path / "teacher")]

    # a later call on the same machine: the teacher trained before, the student alone starts at once
    started.clear()
    (tmp_path / "student" / "metrics.csv").unlink()
    runs = gpu_recipes.train_all(SimpleNamespace(only=["student"], set=[], out=tmp_path, deadline=30.0))
    assert [r.state for r in runs] == ["finished"] and [n for n, _ in started] == ["student"]

    # without it, or when it fails, the student says why it did not start
    other = tmp_path / "other"
    runs = gpu_recipes.train_all(SimpleNamespace(only=["student"], set=[], out=other, deadline=30.0))
    assert runs[0].state.startswith("not started: its teacher teacher has not finished here")

    def failing(name, args, opts, threads):
        (opts.out / name).mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    monkeypatch.setattr(gpu_recipes, "start", failing)
    runs = gpu_recipes.train_all(SimpleNamespace(only=None, set=[], out=tmp_path / "failing", deadline=30.0))
    assert [r.state for r in runs] == ["failed (exit 3)", "not started: its teacher teacher failed (exit 3)"]


def test_an_ensemble_of_finished_runs_reads_the_test_split_only_past_the_bar(
    gpu_recipes, synthetic_manifest, tmp_path, monkeypatch
):
    import json

    from eyescreen.config import preset
    from eyescreen.train import train

    out = tmp_path / "runs"
    tiny = dict(model="tiny-cnn", image_size=32, epochs=1, batch_size=8, precision="fp32")
    train(preset("quick", seed=1, **tiny), synthetic_manifest, out / "s1", progress=False)
    train(preset("quick", seed=2, **tiny), synthetic_manifest, out / "s2", split_file=out / "s1" / "split.csv",
          progress=False)  # fmt: skip
    opts = SimpleNamespace(out=out, data=synthetic_manifest, eval_deadline=120)
    folder = out / "ens-s1+s2"

    monkeypatch.setattr(gpu_recipes, "ENSEMBLE_BAR", {"macro_auc": 0.0, "balanced_accuracy": 0.0})
    row = gpu_recipes.ensemble(["s1", "s2", "never-trained"], opts)
    assert row["members"] == ["s1", "s2"] and "state" not in row and "test" not in row
    assert 0 <= row["val_macro_auc"] <= 1 and 0 <= row["val_balanced_accuracy_with_fellow"] <= 1
    report = json.loads((folder / "eval-test" / "report.json").read_text())
    assert row["test_macro_auc"] == round(report["metrics"]["macro_auc"], 4)
    assert 0 <= row["test_macro_auc_with_fellow"] <= 1
    assert json.loads((folder / "summary.json").read_text()) == row

    # under the bar (the reports above stand in for a second evaluation): the test split is not read
    calls = []
    monkeypatch.setattr(gpu_recipes, "_eyescreen", lambda args, *rest: calls.append(args) or True)
    monkeypatch.setattr(gpu_recipes, "ENSEMBLE_BAR", {"macro_auc": 1.01, "balanced_accuracy": 0.0})
    row = gpu_recipes.ensemble(["s1", "s2"], opts)
    assert row["test"] == "not read: validation macro_auc with the fellow eye under the bar"
    assert [c[0] for c in calls] == ["ensemble", "evaluate"]
    assert calls[1][calls[1].index("--subset") + 1] == "val"
    assert "test_macro_auc" not in row

    assert gpu_recipes.ensemble(["s1", "never-trained"], opts) is None  # one member is no ensemble
