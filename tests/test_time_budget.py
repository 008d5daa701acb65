"""`train --time-budget`: after the first epoch, as many of the epochs asked as fit the minutes given."""

import json
import time

import pytest

from eyescreen import checkpoint as ckpt
from eyescreen import pace
from eyescreen import train as train_module
from eyescreen.checkpoint import load_model, load_state
from eyescreen.cli import main
from eyescreen.pace import epochs_within
from eyescreen.train import lr_factor, train
from interrupt import interrupted_after_saves
from test_pipeline import tiny_config


def epochs_logged(run) -> int:
    return (run / "metrics.csv").read_text().count("\n") - 1


def test_the_epochs_that_fit_are_those_done_plus_what_the_time_left_holds():
    assert epochs_within(600, 100, 50, 1, 60) == 11  # 500 s left: 10 more epochs of 50 s
    assert epochs_within(600, 100, 50, 1, 8) == 8  # never more than asked
    assert epochs_within(600, 700, 50, 1, 60) == 1  # over budget already: stop after the epoch done
    assert epochs_within(600, 599, 50, 2, 60) == 2


def test_a_budget_spent_by_the_first_epoch_ends_the_run_there_calibrated_and_said(
    synthetic_manifest, tmp_path, capsys
):
    best = train(
        tiny_config(epochs=4, time_budget=1e-4), synthetic_manifest, tmp_path / "run", progress=False
    )
    out = capsys.readouterr().out
    assert "time budget 0.0001 min" in out and "1 of the 4 epochs asked fit" in out
    assert epochs_logged(tmp_path / "run") == 1
    _, meta = load_model(best)
    assert meta["config"]["epochs"] == 1 and meta["config"]["time_budget"] == 1e-4
    assert "temperature" in meta["calibration"]  # the run ends as any other: calibrated on validation
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["epochs"] == 1
    budget = json.loads((tmp_path / "run" / "run_info.json").read_text())["time_budget"]
    assert budget["epochs_asked"] == 4 and budget["epochs"] == 1
    assert budget["first_epoch_seconds"] > 0
    assert main(["info", str(best)]) == 0  # the model card says why the run is shorter than its preset
    assert "time budget: 0.0001 min, in which 1 of the 4 epochs asked fit" in capsys.readouterr().out


def test_a_budget_that_holds_every_epoch_changes_nothing(synthetic_manifest, tmp_path, capsys):
    train(tiny_config(epochs=3, time_budget=600), synthetic_manifest, tmp_path / "run", progress=False)
    assert "all 3 epochs asked fit" in capsys.readouterr().out
    assert epochs_logged(tmp_path / "run") == 3
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert float(rows[-1].split(",")[1]) == pytest.approx(3e-3 * lr_factor(tiny_config(epochs=3), 2))


def test_the_pace_of_the_first_epoch_sets_the_epochs_and_the_schedule_ends_at_zero(
    synthetic_manifest, tmp_path, monkeypatch, capsys
):
    seen, real = [], pace.epochs_within

    def as_if_100_s_an_epoch(budget_s, elapsed_s, epoch_s, done, asked):
        seen.append((budget_s, elapsed_s, epoch_s, done, asked))
        return real(budget_s, 100.0, 100.0, done, asked)  # a slow machine: one epoch took 100 s

    monkeypatch.setattr(pace, "epochs_within", as_if_100_s_an_epoch)
    run = tmp_path / "run"
    train(tiny_config(epochs=6, time_budget=5), synthetic_manifest, run, progress=False)  # 300 s: 1 + 2
    assert len(seen) == 1 and seen[0][0] == 300 and seen[0][3:] == (1, 6)
    assert 0 < seen[0][2] <= seen[0][1]  # the real first epoch, within the real time since the start
    assert "3 of the 6 epochs asked fit" in capsys.readouterr().out
    assert epochs_logged(run) == 3
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    shortened = tiny_config(epochs=3)
    for epoch, row in enumerate(rows):  # as a 3-epoch run's schedule from the first epoch on
        assert float(row[1]) == pytest.approx(3e-3 * lr_factor(shortened, epoch))
    state = load_state(run / "resume.pt")
    assert json.loads(state["meta"])["config"]["epochs"] == 3
    _, meta = load_model(run / "best.safetensors")
    assert meta["config"]["epochs"] == 3


def test_a_resumed_run_keeps_the_epochs_its_budget_chose(synthetic_manifest, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with interrupted_after_saves(monkeypatch, train_module, saves=2):  # decided after the first epoch
        train(tiny_config(epochs=3, time_budget=600), synthetic_manifest, run, progress=False)
    state = load_state(run / "resume.pt")
    assert json.loads(state["meta"])["budget"]["epochs"] == 3
    state["history"] = json.dumps([row | {"seconds": 1e6} for row in json.loads(state["history"])])
    ckpt.save_state(run / "resume.pt", state)  # a pace that would leave no time, were it asked again
    train(None, synthetic_manifest, run, resume=True, progress=False)
    assert epochs_logged(run) == 3


def test_time_budget_from_the_command_line_and_refused_below_zero(synthetic_manifest, tmp_path, capsys):
    args = ["train", "--data", str(synthetic_manifest), "--preset", "quick", "--model", "tiny-cnn",
            "--image-size", "48", "--epochs", "3", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a"), "--time-budget", "0.0001"]) == 0
    assert epochs_logged(tmp_path / "a") == 1
    assert main([*args, "--out", str(tmp_path / "b"), "--time-budget", "-1"]) != 0
    assert "time_budget must be zero (no limit) or more minutes" in capsys.readouterr().err


def _as_if_started(seconds: float) -> float:
    """A `started` for the pace functions such that `seconds` have gone by since."""
    return time.perf_counter() - seconds


def test_a_machine_that_slows_gets_fewer_epochs_and_never_more():
    budget = {"minutes": 10, "epochs_asked": 8, "epochs": 6, "first_epoch_seconds": 100.0,
              "seconds_before_the_second_epoch": 100.0}  # fmt: skip
    rows = [{"epoch": 1, "seconds": 100.0}, {"epoch": 2, "seconds": 100.0}]
    assert pace.budget_revision(budget, rows, 0, _as_if_started(200)) is None  # on pace: 200 + 4 x 100
    rows[1]["seconds"] = 190.0  # 290 s so far, 145 s an epoch on average: 4 more would end at 870 s
    revised = pace.budget_revision(budget, rows, 0, _as_if_started(290))
    assert revised["epochs"] == 4 and revised["epochs_asked"] == 8 and budget["epochs"] == 6
    assert revised["revisions"] == [
        {"after_epoch": 2, "seconds_an_epoch": 145.0, "elapsed_seconds": 290.0, "epochs": 4}
    ]
    line = pace.budget_line(revised)
    assert "slowed to 145 s" in line and "4 of the 8 epochs asked fit now" in line
    rows.append({"epoch": 3, "seconds": 20.0})  # faster again: the shortened schedule stays
    assert pace.budget_revision(revised, rows, 0, _as_if_started(310)) is None
    rows[2]["seconds"] = 200.0  # over by less than half an epoch: noise, not a slower machine
    assert pace.budget_revision(revised, rows, 0, _as_if_started(490)) is None
    last = [*rows, {"epoch": 4, "seconds": 500.0}]  # the last epoch, over: nothing left to shorten
    assert pace.budget_revision(revised, last, 0, _as_if_started(990)) is None


def test_training_that_slows_after_the_first_epoch_is_shortened_again_and_says_so(
    synthetic_manifest, tmp_path, monkeypatch, capsys
):
    real_decision, real_revision = pace.budget_decision, pace.budget_revision

    def paced(history):  # as if the first epoch took 90 s and every later one 180 s
        return [row | {"seconds": 90.0 if row["epoch"] == 1 else 180.0} for row in history]

    def decision(minutes, asked, history, resumed, started):
        return real_decision(minutes, asked, paced(history), resumed, _as_if_started(90))

    def revision(budget, history, resumed, started):
        slow = paced(history)
        return real_revision(budget, slow, resumed, _as_if_started(sum(r["seconds"] for r in slow)))

    monkeypatch.setattr(pace, "budget_decision", decision)
    monkeypatch.setattr(pace, "budget_revision", revision)
    run = tmp_path / "run"
    best = train(tiny_config(epochs=8, time_budget=10), synthetic_manifest, run, progress=False)
    out = capsys.readouterr().out
    assert "6 of the 8 epochs asked fit" in out and "slowed to 135 s" in out  # 90 s, then 90 + 180 s
    assert epochs_logged(run) == 4
    rates = [float(line.split(",")[1]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    six, four = tiny_config(epochs=6), tiny_config(epochs=4)
    assert rates == pytest.approx([3e-3 * lr_factor(six, 0), 3e-3 * lr_factor(six, 1),
                                   3e-3 * lr_factor(four, 2), 3e-3 * lr_factor(four, 3)])  # fmt: skip
    assert json.loads(load_state(run / "resume.pt")["meta"])["config"]["epochs"] == 4
    budget = json.loads((run / "run_info.json").read_text())["time_budget"]
    assert budget["epochs"] == 4 and [r["after_epoch"] for r in budget["revisions"]] == [2]
    assert main(["info", str(best)]) == 0
    card = capsys.readouterr().out
    assert "4 of the 8 epochs asked fit (the first took 90 s; fewer after epoch 2, at 135 s an epoch)" in card
