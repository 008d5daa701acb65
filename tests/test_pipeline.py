"""End to end: train -> evaluate -> predict, resume, checkpoints, the CLI and the demo."""

import csv
import json
import math
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eyescreen import checkpoint as ckpt
from eyescreen import train as train_module
from eyescreen.checkpoint import CheckpointError, load_model, load_state, save_model
from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.evaluate import evaluate
from eyescreen.pace import time_left
from eyescreen.predict import predict
from eyescreen.report import markdown
from eyescreen.train import train
from interrupt import interrupted_after_saves
from synthetic import fundus


def tiny_config(**kw):
    values = dict(model="tiny-cnn", image_size=48, epochs=2, batch_size=8, lr=3e-3, precision="fp32")
    return preset("quick", **(values | kw))


def test_smoke_train_evaluate_predict(synthetic_manifest, tmp_path, capsys, monkeypatch):
    best = train(tiny_config(epochs=1), synthetic_manifest, tmp_path / "run", progress=False)
    for name in (
        "best.safetensors",
        "last.safetensors",
        "resume.pt",
        "split.csv",
        "metrics.csv",
        "run_info.json",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert {"git_commit", "torch", "command"} <= set(info)

    report = evaluate(best, tmp_path / "eval", progress=False, n_resamples=50)
    assert report["metrics"]["n"] == sum(
        1 for r in csv.DictReader(open(tmp_path / "run" / "split.csv")) if r["split"] == "test"
    )
    for name in (
        "report.json",
        "report.md",
        "report.html",
        "confusion_matrix.png",
        "roc_curves.png",
        "training_curves.png",
    ):
        assert (tmp_path / "eval" / name).is_file(), name
    assert "balanced accuracy" in (tmp_path / "eval" / "report.md").read_text()
    assert (
        "name each eye's most probable class; `predict` names the decision rule's"
        in (tmp_path / "eval" / "report.md").read_text()
    )
    patients = report["patient_level"]["metrics"]
    assert patients["n"] == report["n_patients"]  # synthetic patients: two eyes, one class each
    assert (tmp_path / "eval" / "patients" / "report.md").is_file()
    _, meta = load_model(best)
    assert meta["calibration"]["temperature"] > 0 and "threshold" in meta["calibration"]["referable"]
    assert report["calibration"]["ece_after"] >= 0 and "sensitivity" in report["calibration"]["referable"]
    c = report["calibration"]
    assert (
        f"log-loss (what the temperature minimises on validation) before {c['log_loss_before']:.3f}"
        in (tmp_path / "eval" / "report.md").read_text()
    )
    flat = markdown(report | {"calibration": c | {"temperature": 20.0}})  # the fit at the top of its range
    assert "- The temperature is at the top of its range (20)" in flat
    assert main(["calibrate", "--checkpoint", str(best)]) == 0  # re-fitting is idempotent
    assert load_model(best)[1]["calibration"]["temperature"] == pytest.approx(
        meta["calibration"]["temperature"], rel=1e-3
    )

    # other data, lacking one of the model's classes (an external set): scored over the classes present
    with open(synthetic_manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != "spots"]
    other = tmp_path / "no-spots.csv"
    with open(other, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(r | {"image": str(synthetic_manifest.parent / r["image"])} for r in rows)
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(other), "--subset", "all",
                 "--out", str(tmp_path / "external"), "--bootstrap", "20", "--no-progress"]) == 0  # fmt: skip
    external = json.loads((tmp_path / "external" / "report.json").read_text())
    assert "note: no spots in these data" in capsys.readouterr().out
    assert (
        external["absent_classes"] == ["spots"] and external["metrics"]["per_class"]["spots"]["support"] == 0
    )
    assert external["metrics"]["per_class"]["spots"]["roc_auc"] is None or math.isnan(
        external["metrics"]["per_class"]["spots"]["roc_auc"]
    )
    assert "absent from these data: spots" in (tmp_path / "external" / "report.md").read_text()

    # labelled by another hand: "Normal" is the model's normal; a class it does not have is left out, and said
    relabel = {"normal": "Normal", "blob": "Blob cells"}
    with open(other, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(r | {"image": str(synthetic_manifest.parent / r["image"]),
                           "label": relabel.get(r["label"], r["label"])} for r in rows)  # fmt: skip
    n = {c: sum(r["label"] == c for r in rows) for c in relabel}
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(other), "--subset", "all",
                 "--out", str(tmp_path / "relabelled"), "--bootstrap", "20", "--no-progress"]) == 0  # fmt: skip
    relabelled = json.loads((tmp_path / "relabelled" / "report.json").read_text())
    assert relabelled["metrics"]["per_class"]["normal"]["support"] == n["normal"] > 0
    assert relabelled["left_out_classes"] == {"Blob cells": n["blob"]}
    said = f"left out: {n['blob']} images of classes the model does not have (Blob cells {n['blob']})"
    assert said in capsys.readouterr().out and said in (tmp_path / "relabelled" / "report.md").read_text()

    folder = tmp_path / "new"
    folder.mkdir()
    fundus(80, "spots", seed=5)[0].save(folder / "a.jpg")
    fundus(80, None, seed=6)[0].save(folder / "b.png")
    (folder / "broken.jpg").write_text("not an image")
    result = predict([folder], best, tmp_path / "pred.csv", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert result["predicted"] == 2 and len(result["failed"]) == 1
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in rows}
    assert "not a readable image" in by_name["broken.jpg"]["error"]
    assert by_name["a.jpg"]["referable"] in ("yes", "no")  # the checkpoint's screening operating point
    assert by_name["a.jpg"]["predicted"] in ("blob", "normal", "spots") and not by_name["a.jpg"]["error"]
    probs = [float(by_name["a.jpg"][f"prob_{c}"]) for c in ("blob", "normal", "spots")]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert not by_name["a.jpg"]["warning"]
    # predict, evaluate and serve name the class the checkpoint's decision rule picks.
    assert len(meta["calibration"]["decision"]["class_weights"]) == 3 and "decision" in report
    model, forced = load_model(best)
    forced["calibration"]["decision"]["class_weights"] = [1e-6, 1e-6, 1e6]
    forced["calibration"]["temperature"] = 3.0  # far from 1: scaled and raw probabilities differ
    forced["calibration"]["decision"]["prior_power"] = 1.0
    save_model(tmp_path / "forced.safetensors", model, forced)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "forced.safetensors"), "--out", str(tmp_path / "fe"),
                 "--bootstrap", "20", "--no-progress"]) == 0  # fmt: skip
    rule = json.loads((tmp_path / "fe" / "report.json").read_text())["decision"]["metrics"]
    shown = capsys.readouterr().out.splitlines()
    n_test = json.loads((tmp_path / "fe" / "report.json").read_text())["metrics"]["n"]
    assert f"test split, {n_test} eyes; classes as the most probable one:" in shown
    line = next(x for x in shown if x.startswith("with the decision rule"))
    assert f"balanced_accuracy {rule['balanced_accuracy']:.4f}" in line and "the class predict names" in line
    predict([folder], tmp_path / "forced.safetensors", tmp_path / "forced.csv", progress=False)
    assert {r["predicted"] for r in csv.DictReader(open(tmp_path / "forced.csv")) if not r["error"]} == {
        forced["classes"][2]
    }
    from synthetic import everyday_photo

    photo = everyday_photo(tmp_path / "holiday.jpg")
    result = predict([photo], best, tmp_path / "pred2.csv", progress=False)
    row = next(csv.DictReader(open(tmp_path / "pred2.csv")))
    assert result["predicted"] == 1 and row["predicted"]  # predicted all the same, but flagged
    assert "may not be a fundus photograph" in row["warning"] and result["warnings"]

    rc = main(
        ["explain", str(folder), "--checkpoint", str(best), "--out", str(tmp_path / "cams"), "--no-progress"]
    )
    assert rc == 0
    assert {p.name for p in (tmp_path / "cams" / "overlays").iterdir()} == {"a.png", "b.png"}
    assert np.load(tmp_path / "cams" / "maps" / "a.npy").shape == (48, 48)
    assert not any(r["warning"] for r in csv.DictReader(open(tmp_path / "cams" / "explanations.csv")))
    capsys.readouterr()
    assert main(["explain", str(photo), "--checkpoint", str(best), "--out", str(tmp_path / "photo-cams"),
                 "--no-progress"]) == 0  # fmt: skip
    row = next(csv.DictReader(open(tmp_path / "photo-cams" / "explanations.csv")))
    assert "holiday.jpg: may not be a fundus photograph" in row["warning"]  # explained, but flagged
    assert "may not be a fundus photograph" in (tmp_path / "photo-cams" / "index.html").read_text()
    assert "warning: " + row["warning"] in capsys.readouterr().err
    assert "predicted" in (tmp_path / "cams" / "index.html").read_text()
    # explain names the class predict names, at the probability predict shows (temperature-scaled)
    assert main(["explain", str(folder), "--checkpoint", str(tmp_path / "forced.safetensors"), "--out",
                 str(tmp_path / "forced-cams"), "--no-progress"]) == 0  # fmt: skip
    predicted = {
        r["file"].rsplit("/", 1)[-1]: r
        for r in csv.DictReader(open(tmp_path / "forced.csv"))
        if not r["error"]
    }
    explained = list(csv.DictReader(open(tmp_path / "forced-cams" / "explanations.csv")))
    assert {r["name"] for r in explained} == set(predicted)
    for row in explained:
        assert row["predicted"] == predicted[row["name"]]["predicted"]
        assert float(row["probability"]) == pytest.approx(
            float(predicted[row["name"]]["probability"]), abs=1e-3
        )
    rc = main(
        ["explain", "--subset", "test", "--checkpoint", str(best), "--method", "eigencam", "--no-progress"]
    )
    assert rc == 0 and "true " in (best.parent / "explain-test" / "index.html").read_text()  # beside the run
    split_rows = list(csv.DictReader(open(best.parent / "split.csv")))
    damaged = synthetic_manifest.parent / next(r["image"] for r in split_rows if r["split"] == "test")
    photograph = damaged.read_bytes()
    damaged.write_bytes(b"not a photograph")
    try:
        faith = main(["explain", "--evaluate", "--subset", "test", "--checkpoint", str(best), "--methods",
                      "gradcam", "--out", str(tmp_path / "faith"), "--no-progress"])  # fmt: skip
        rc = main(["explain", "--anatomy", "--subset", "test", "--checkpoint", str(best),
                   "--out", str(tmp_path / "anatomy"), "--no-progress"])  # fmt: skip
        import eyescreen.explain_cli

        with monkeypatch.context() as m:
            m.setattr(eyescreen.explain_cli, "EYE_CHUNK", 3)  # read three eyes at a time: the same table
            main(["explain", "--anatomy", "--subset", "test", "--checkpoint", str(best),
                  "--out", str(tmp_path / "anatomy-3"), "--no-progress"])  # fmt: skip
    finally:  # the synthetic data set is shared by the session's tests
        damaged.write_bytes(photograph)
    rows = json.loads((tmp_path / "faith" / "faithfulness.json").read_text())
    assert faith == 0 and [r["method"] for r in rows] == ["gradcam", "random map (baseline)"]
    assert 0 <= rows[0]["deletion_auc"] <= 1 and rows[0]["ms_per_image"] > 0
    shares = json.loads((tmp_path / "faith" / "anatomy.json").read_text())
    assert shares and all(abs(r["disc_mass"] + r["macula_mass"] + r["rest_mass"] - 1) < 1e-6 for r in shares)
    text = (tmp_path / "faith" / "faithfulness.md").read_text()
    assert "1 left out:" in text and f"{damaged}: not a readable image" in text
    rows = json.loads((tmp_path / "anatomy" / "anatomy.json").read_text())
    n_test = sum(1 for r in split_rows if r["split"] == "test")
    assert rc == 0 and 0 < sum(r["n"] for r in rows) <= n_test - 1  # every readable test eye, not a sample
    assert all(lo <= r["disc_mass"] <= hi for r in rows for lo, hi in [r["disc_mass_ci"]])
    text = (tmp_path / "anatomy" / "anatomy.md").read_text()
    assert "resampling patients" in text and "1 left out:" in text and damaged.name in text
    assert f"{n_test - 1} eyes of the test split" in text
    assert (tmp_path / "anatomy-3" / "anatomy.md").read_text() == text
    both = ["explain", "--anatomy", "--evaluate", "--subset", "test", "--checkpoint", str(best)]
    assert main(both) != 0


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["plain", "weight-average"])
def test_resume_after_interruption_equals_uninterrupted_run(synthetic_manifest, tmp_path, monkeypatch, ema):
    # seed-cnn has dropout: the RNG state must be restored too; with ema, the running average as well
    cfg = dict(model="seed-cnn", epochs=3, ema=ema)
    train(tiny_config(**cfg), synthetic_manifest, tmp_path / "full", progress=False)

    with interrupted_after_saves(monkeypatch, train_module, saves=2):
        train(tiny_config(**cfg), synthetic_manifest, tmp_path / "cut", progress=False)
    assert load_state(tmp_path / "cut" / "resume.pt")["epoch"] == 1
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(**cfg), synthetic_manifest, tmp_path / "cut", progress=False)
    train(None, synthetic_manifest, tmp_path / "cut", resume=True, progress=False)

    full = load_file(tmp_path / "full" / "last.safetensors")
    resumed = load_file(tmp_path / "cut" / "last.safetensors")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert (tmp_path / "full" / "metrics.csv").read_text().count("\n") == (
        tmp_path / "cut" / "metrics.csv"
    ).read_text().count("\n")


def test_writes_spaced_out_by_save_every_still_resume_to_the_same_weights(
    synthetic_manifest, tmp_path, monkeypatch
):
    """With --save-every longer than the run (a GPU's fast epochs), the files are written after the first
    and last epochs only; best.safetensors holds the best epoch's weights all the same, and a run cut
    between two writes resumes from the last one and ends as an uninterrupted run does."""
    cfg = dict(model="seed-cnn", epochs=4)
    full = train(tiny_config(**cfg), synthetic_manifest, tmp_path / "full", progress=False)

    real, writes = train_module.save_state, []
    monkeypatch.setattr(
        train_module, "save_state", lambda path, state: (writes.append(state["epoch"]), real(path, state))
    )
    spaced = train(
        tiny_config(**cfg), synthetic_manifest, tmp_path / "spaced", progress=False, save_every=1e9
    )
    assert writes == [0, 3]
    best_epoch = load_model(full)[1]["epoch"]
    assert load_model(spaced)[1]["epoch"] == best_epoch
    for k, v in load_file(full).items():
        assert torch.equal(v, load_file(spaced)[k]), k

    real_log = train_module._write_log

    def cut_at_epoch_3(path, history):
        real_log(path, history)
        if len(history) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_write_log", cut_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(**cfg), synthetic_manifest, tmp_path / "cut", progress=False, save_every=1e9)
    assert load_state(tmp_path / "cut" / "resume.pt")["epoch"] == 0  # the first epoch's write only
    monkeypatch.setattr(train_module, "_write_log", real_log)
    train(None, synthetic_manifest, tmp_path / "cut", resume=True, progress=False, save_every=1e9)
    for name in ("last.safetensors", "best.safetensors"):
        expected, resumed = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
        for k in expected:
            assert torch.equal(expected[k], resumed[k]), (name, k)
    assert (tmp_path / "cut" / "metrics.csv").read_text().count("\n") == 5  # header + 4 epochs


def test_checkpoint_round_trip_describes_itself(synthetic_manifest, tmp_path):
    best = train(tiny_config(epochs=1), synthetic_manifest, tmp_path / "run", progress=False)
    model, meta = load_model(best)
    assert meta["model"] == {"name": "tiny-cnn", "args": {"num_classes": 3}}
    assert meta["classes"] == ["blob", "normal", "spots"]
    assert meta["preprocessing"]["image_size"] == 48 and "version" in meta["preprocessing"]
    assert set(meta["normalization"]) == {"mean", "std"}
    assert meta["config"]["model"] == "tiny-cnn" and len(meta["split"]) == 60
    x = torch.randn(2, 3, 48, 48)
    again, _ = load_model(best)
    assert torch.equal(model(x), again(x))


def test_damaged_and_malicious_checkpoints_are_refused(tmp_path):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="damaged.safetensors"):
        load_model(damaged)

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # unpickling would create the marker file
            return (open, (str(marker), "w"))

    evil = tmp_path / "resume.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_state(evil)
    assert not marker.exists()
    assert ckpt.FORMAT.startswith("eyescreen")


def test_cli_train_with_overrides_and_bad_input_messages(synthetic_manifest, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--data",
            str(synthetic_manifest),
            "--out",
            str(out),
            "--preset",
            "quick",
            "--model",
            "tiny-cnn",
            "--image-size",
            "40",
            "--epochs",
            "1",
            "--precision",
            "fp32",
            "--classes",
            "normal,spots",
            "--no-progress",
        ]
    )
    assert rc == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["image_size"] == 40 and saved["classes"] == ["normal", "spots"]
    capsys.readouterr()
    assert (
        main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    )  # its data from the run itself
    assert f"resuming {out} after epoch 1 of 1" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "other"), "--no-progress"]) == 2
    assert "give the data to train on: --data" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors: checkpoint not found" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "nope.csv: no such manifest or folder" in capsys.readouterr().err
    # counts are checked where they are read, not deep inside a loop ("range() arg 3 must not be zero")
    best = str(out / "best.safetensors")
    for argv, flag in (
        (["predict", str(tmp_path), "--checkpoint", best, "--batch-size", "0"], "--batch-size"),
        (["explain", "--evaluate", "--subset", "test", "--checkpoint", best, "--limit", "0"], "--limit"),
        (["evaluate", "--checkpoint", best, "--bootstrap", "-5"], "--bootstrap"),
        (["serve", "--checkpoint", best, "--workers", "two"], "--workers"),
        (["serve", "--checkpoint", best, "--port", "99999"], "--port"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}:" in err
        assert any(why in err for why in ("must be at least 1", "is not a whole number", "at most 65535"))


def test_a_checkpoint_whose_data_moved_says_so_and_takes_its_new_place(synthetic_manifest, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_manifest.parent, data)
    best = str(train(tiny_config(epochs=1), data / synthetic_manifest.name, tmp_path / "run", progress=False))
    moved = tmp_path / "elsewhere"
    data.rename(moved)  # the run copied to another machine, say, where the data lives at another path
    capsys.readouterr()
    for argv in (
        ["evaluate", "--checkpoint", best, "--out", str(tmp_path / "eval"), "--bootstrap", "20"],
        ["calibrate", "--checkpoint", best],
        ["explain", "--checkpoint", best, "--subset", "test", "--out", str(tmp_path / "explain")],
    ):
        assert main(argv + ["--no-progress"]) == 2, argv
        assert f"{data / synthetic_manifest.name}: the data this checkpoint was trained on is not there" in (
            capsys.readouterr().err
        )
        assert main(argv + ["--no-progress", "--data", str(moved / synthetic_manifest.name)]) == 0, argv
        capsys.readouterr()
    assert (tmp_path / "eval" / "report.json").is_file() and (tmp_path / "explain" / "index.html").is_file()


def test_demo_runs_end_to_end_on_the_bundled_sample(tmp_path, capsys):
    from eyescreen.demo import run_demo

    report = run_demo(
        tmp_path / "demo", progress=False, model="tiny-cnn", epochs=1, image_size=64, precision="fp32"
    )
    assert report["classes"] == ["amd", "dr", "glaucoma", "normal"]
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
    out = capsys.readouterr().out
    assert "report:" in out
    assert "far too few to learn from" in out  # a newcomer is told what the numbers of 80 eyes mean
    # the commands it suggests next name this run's model
    checkpoint = tmp_path / "demo" / "best.safetensors"
    assert f"eyescreen serve --checkpoint {checkpoint}" in out
    assert f"eyescreen info {checkpoint}" in out
    assert main(["info", str(checkpoint)]) == 0 and "recipe: preset quick with" in capsys.readouterr().out


def test_training_skips_and_lists_unreadable_images(tmp_path):
    from synthetic import write_dataset

    manifest = write_dataset(tmp_path / "data", patients=12)
    (tmp_path / "data" / "images" / "3_left.jpg").write_bytes(b"")  # zero-byte photo inside the data
    train(tiny_config(epochs=1), manifest, tmp_path / "run", progress=False)
    skipped = (tmp_path / "run" / "skipped_images.txt").read_text()
    assert "3_left.jpg: empty file" in skipped


def test_same_seed_and_data_give_the_same_metrics_and_weights(synthetic_manifest, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        train(tiny_config(augment="fundus"), synthetic_manifest, run, progress=False)

    def log(run):
        with open(run / "metrics.csv") as f:
            return list(csv.DictReader(f))

    def measured(rows):  # wall time and memory vary from run to run; everything else must not
        return [{k: v for k, v in row.items() if k not in ("seconds", "peak_rss_mb")} for row in rows]

    assert measured(log(runs[0])) == measured(log(runs[1]))
    assert all(float(row["peak_rss_mb"]) > 10 for row in log(runs[0]))
    a, b = load_file(runs[0] / "last.safetensors"), load_file(runs[1] / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((runs[0] / "run_info.json").read_text())
    assert {"git_commit", "command", "torch", "python"} <= set(info)
    assert json.loads((runs[0] / "config.json").read_text())["config"]["seed"] == 0


def test_run_info_records_the_commit_a_caller_names(monkeypatch):
    """A tree copied to another machine may carry no .git or a stale one: EYESCREEN_COMMIT wins."""
    from eyescreen.train import run_info

    monkeypatch.setenv("EYESCREEN_COMMIT", "5ec96bab")
    assert run_info([])["git_commit"] == "5ec96bab"
    monkeypatch.delenv("EYESCREEN_COMMIT")
    assert run_info([])["git_commit"] != "5ec96bab"


def test_time_left_follows_the_pace_of_the_last_epochs():
    history = [{"epoch": e, "seconds": s} for e, s in [(1, 400.0), (2, 100.0), (3, 130.0), (4, 130.0)]]
    # 56 epochs to go at the mean of the last three (120 s): 112 minutes; the slow first epoch is ignored
    assert time_left(history, 60) == "about 1 h 52 min left"
    assert time_left(history[:1], 3) == "about 13 min left"
    assert time_left([{"epoch": 1, "seconds": 2.0}], 2) == "under a minute left"
    assert time_left([{"epoch": 1, "seconds": 50.0}], 3) == "about 2 min left"
    assert time_left(history, 4) == ""  # the last epoch: nothing left to estimate
    assert time_left([], 4) == ""


def test_training_says_its_precision_and_the_time_left(synthetic_manifest, tmp_path, monkeypatch, capsys):
    import eyescreen.cpu_precision
    import eyescreen.inference

    monkeypatch.setattr(eyescreen.inference, "cpu_precision", lambda: "fp32")
    monkeypatch.setattr(eyescreen.cpu_precision, "cpu_supports_bf16", lambda: False)
    train(tiny_config(precision="auto"), synthetic_manifest, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert "training on cpu, fp32 (this CPU has no native bf16" in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert "left)" in epoch_lines[0] and "left)" not in epoch_lines[1]  # epoch 1 of 2, then the last


def test_time_left_after_a_resume_counts_only_the_epochs_of_this_session(
    synthetic_manifest, tmp_path, monkeypatch, capsys
):
    with interrupted_after_saves(monkeypatch, train_module):
        train(tiny_config(epochs=4), synthetic_manifest, tmp_path / "run", progress=False)
    state = load_state(tmp_path / "run" / "resume.pt")  # as if the first epoch ran on a far slower machine
    state["history"] = json.dumps([row | {"seconds": 1e6} for row in json.loads(state["history"])])
    ckpt.save_state(tmp_path / "run" / "resume.pt", state)
    capsys.readouterr()
    train(None, synthetic_manifest, tmp_path / "run", resume=True, progress=False)
    epoch_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert epoch_lines[0].startswith("epoch 2/4") and epoch_lines[0].endswith("(under a minute left)")


def test_save_every_reaches_train_from_the_command_line(monkeypatch, tmp_path, synthetic_manifest):
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda *a, **kw: seen.update(kw))
    args = ["train", "--data", str(synthetic_manifest), "--out", str(tmp_path / "r"), "--preset", "quick"]
    assert main([*args, "--save-every", "45", "--no-progress"]) == 0
    assert seen["save_every"] == 45.0
    assert main([*args, "--no-progress"]) == 0
    assert seen["save_every"] is None  # train chooses by device


def test_sigterm_stops_after_the_epoch_with_it_written_and_resume_ends_as_an_uninterrupted_run(
    synthetic_manifest, tmp_path, monkeypatch, capsys
):
    """A scheduler's SIGTERM mid-run, writes spaced out as on a GPU: the epoch finishes and is written
    (not the earlier write), the command exits 143 saying how to go on, and --resume completes it."""
    import os
    import signal

    args = ["train", "--data", str(synthetic_manifest), "--preset", "quick", "--model", "seed-cnn",
            "--image-size", "48", "--epochs", "4", "--batch-size", "8", "--precision", "fp32",
            "--save-every", "1e9", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    real_log, handler = train_module._write_log, signal.getsignal(signal.SIGTERM)

    def term_at_epoch_2(path, history):
        real_log(path, history)
        if len(history) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module, "_write_log", term_at_epoch_2)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 128 + signal.SIGTERM
    assert "stopped (SIGTERM) after epoch 2 of 4" in capsys.readouterr().err
    assert load_state(tmp_path / "cut" / "resume.pt")["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is handler  # ours did not outlive the run
    monkeypatch.setattr(train_module, "_write_log", real_log)
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--no-progress"]) == 0
    expected, resumed = (
        load_file(tmp_path / "full" / "last.safetensors"),
        load_file(tmp_path / "cut" / "last.safetensors"),
    )
    for k in expected:
        assert torch.equal(expected[k], resumed[k]), k


def test_a_second_ctrl_c_stops_at_once():
    import os
    import signal

    from eyescreen.stopping import StopRequest

    handler = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.reason == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`eyescreen presets | head -1`: the pipe closes before the command writes; no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "eyescreen", "presets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader is gone before a line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
