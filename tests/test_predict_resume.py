"""An interrupted `predict` job resumes: the rows already written are kept, the rest is predicted, and
the result equals an uninterrupted run."""

import csv
import shutil
from dataclasses import replace

import pytest

from eyescreen import predict as predict_module
from eyescreen.config import preset
from eyescreen.predict import predict
from eyescreen.predict_pairs import predict_pairs
from eyescreen.train import train
from synthetic import fundus, write_dataset


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    manifest = write_dataset(root / "data", patients=12)
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32")
    first = train(cfg, manifest, root / "a", progress=False, cache_dir=root / "cache")
    second = train(replace(cfg, seed=1), manifest, root / "b", progress=False, cache_dir=root / "cache")
    return first, second


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(9):
        fundus(64, ("spots", None, "blob")[i % 3], seed=i)[0].save(folder / f"{i}_right.jpg")
        fundus(64, None, seed=100 + i)[0].save(folder / f"{i}_left.jpg")
    (folder / "broken.jpg").write_text("not an image")
    return folder


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_rows(a, b, key):
    """The same rows in any order; probabilities equal up to float noise (chunks differ after a resume)."""
    a, b = {r[key]: r for r in a}, {r[key]: r for r in b}
    assert a.keys() == b.keys()
    for k in a:
        for column, value in a[k].items():
            if "prob" in column and value:
                assert float(value) == pytest.approx(float(b[k][column]), abs=1e-4), (k, column)
            else:
                assert value == b[k][column], (k, column)


def test_interrupted_predict_resumes_and_equals_an_uninterrupted_run(
    checkpoints, folder, tmp_path, monkeypatch
):
    best, other = checkpoints
    full = predict([folder], best, tmp_path / "full.csv", batch_size=4, precision="fp32", progress=False)
    assert full["predicted"] == 18 and len(full["failed"]) == 1

    # Interrupted at the 10th image: the rows of the chunks before it were flushed.
    out = tmp_path / "out.csv"
    real, calls = predict_module.preprocess_noted, []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "preprocess_noted", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict([folder], best, out, batch_size=4, precision="fp32", progress=False)
    monkeypatch.setattr(predict_module, "preprocess_noted", real)
    written = rows(out)
    assert len(written) == 8  # two whole chunks
    with open(out, "a") as f:  # and a row torn by the interruption
        f.write(f"{folder / 'x.jpg'},norm")

    with pytest.raises(ValueError, match="same checkpoint"):
        predict([folder], other, out, progress=False, resume=True)
    resumed = predict([folder], best, out, batch_size=4, precision="fp32", progress=False, resume=True)
    kept_ok = sum(1 for r in written if not r["error"])
    assert resumed["resumed"] == kept_ok  # an unreadable file is tried again
    assert resumed["predicted"] == 18 - kept_ok and len(resumed["failed"]) == 1
    after = rows(out)
    assert len(after) == 19 and len({r["file"] for r in after}) == 19
    assert_same_rows(after, rows(tmp_path / "full.csv"), "file")

    # Resuming a finished job predicts nothing; without --resume the file starts again.
    again = predict([folder], best, out, progress=False, resume=True)
    assert again["predicted"] == 0 and again["resumed"] == 18 and len(rows(out)) == 19
    fresh = predict([folder / "0_right.jpg"], best, out, progress=False)
    assert fresh["resumed"] == 0 and len(rows(out)) == 1


def test_resume_refuses_a_csv_it_did_not_write(checkpoints, folder, tmp_path):
    best, _ = checkpoints
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("file,score\na.jpg,0.3\n")
    with pytest.raises(ValueError, match="foreign.csv"):
        predict([folder], best, foreign, progress=False, resume=True)
    assert foreign.read_text() == "file,score\na.jpg,0.3\n"  # left as it was
    # A record from this checkpoint but other columns (say, an edited file) is refused too.
    predict([folder / "0_right.jpg"], best, tmp_path / "mine.csv", progress=False)
    shutil.copy(tmp_path / "mine.csv.job.json", tmp_path / "foreign.csv.job.json")
    with pytest.raises(ValueError, match="columns"):
        predict([folder], best, foreign, progress=False, resume=True)


def test_interrupted_predict_pairs_resumes(checkpoints, folder, tmp_path):
    best, _ = checkpoints
    full = predict_pairs(
        [folder], best, tmp_path / "full.csv", batch_size=4, precision="fp32", progress=False
    )
    assert full["patients"] == 9
    out = tmp_path / "out.csv"
    shutil.copy(tmp_path / "full.csv.job.json", tmp_path / "out.csv.job.json")
    with open(tmp_path / "full.csv") as f:
        lines = f.readlines()
    (out).write_text("".join(lines[:5]) + lines[5][:20])  # four patients and a torn row
    resumed = predict_pairs([folder], best, out, batch_size=4, precision="fp32", progress=False, resume=True)
    assert resumed["resumed"] == 4 and resumed["patients"] == 5
    assert_same_rows(rows(out), rows(tmp_path / "full.csv"), "patient")


def overlays_interrupted_at(n: int, monkeypatch) -> list:
    """Explain's n-th overlay raises KeyboardInterrupt (as Ctrl-C would); the list counts the overlays."""
    from eyescreen import explain as explain_module

    real, calls = explain_module.save_overlay, []

    def interrupted(*a, **k):
        calls.append(a)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(explain_module, "save_overlay", interrupted)
    return calls


def test_interrupted_explain_resumes(checkpoints, folder, tmp_path, monkeypatch):
    from eyescreen.cli import main

    best, other = checkpoints
    (folder / "broken.jpg").unlink()
    args = ["explain", str(folder), "--checkpoint", str(best), "--batch-size", "4", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    calls = overlays_interrupted_at(6, monkeypatch)
    out = tmp_path / "out"
    assert main(args + ["--out", str(out)]) == 130  # interrupted, as by Ctrl-C
    # The first chunk, and the one row of the second whose overlay was saved before the interruption.
    assert len(rows(out / "explanations.csv")) == 5
    assert main(args + ["--out", str(out), "--method", "gradcam++", "--resume"]) == 2  # other settings
    calls.clear()
    calls.extend([None] * 100)  # no more interruptions: count the overlays the resumed run draws
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert len(calls) == 100 + 18 - 5  # only the rest was explained
    assert_same_rows(rows(out / "explanations.csv"), rows(tmp_path / "full" / "explanations.csv"), "name")
    assert len(list((out / "overlays").glob("*.png"))) == 18
    assert (out / "index.html").read_text().count("<img") == (
        tmp_path / "full" / "index.html"
    ).read_text().count("<img")


def test_interrupted_explain_of_a_both_eye_model_resumes(folder, tmp_path, monkeypatch):
    from eyescreen.cli import main

    manifest = write_dataset(tmp_path / "data", patients=12)
    cfg = preset("quick", model="tiny-cnn-binocular", image_size=40, epochs=1, batch_size=4, precision="fp32")
    best = train(cfg, manifest, tmp_path / "run", progress=False, cache_dir=tmp_path / "cache")
    args = ["explain", str(folder), "--checkpoint", str(best), "--batch-size", "4", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    full = rows(tmp_path / "full" / "explanations.csv")
    assert len(full) == 9 and all(r["right_file"] and r["left_file"] for r in full)  # one row per patient
    calls = overlays_interrupted_at(6, monkeypatch)
    out = tmp_path / "out"
    assert main(args + ["--out", str(out)]) == 130  # interrupted in the second chunk of four patients
    assert len(rows(out / "explanations.csv")) == 5  # the first chunk, and one patient drawn of the second
    assert main(args + ["--out", str(out), "--target", "blob", "--resume"]) == 2  # other settings
    calls.clear()
    calls.extend([None] * 100)  # no more interruptions: count the overlays the resumed run draws
    assert main(args + ["--out", str(out), "--resume"]) == 0
    assert len(calls) == 100 + 9 - 5  # only the rest was explained
    assert_same_rows(rows(out / "explanations.csv"), full, "name")
    assert (out / "index.html").read_text().count("<img") == 9 and "<p>9 patients;" in (
        out / "index.html"
    ).read_text()


def test_folder_scan_names_the_files_it_left_aside(checkpoints, folder, tmp_path, capsys):
    from eyescreen.cli import main

    fundus(64, "spots", seed=50)[0].save(folder / "extra.webp")
    (folder / "notes.txt").write_text("a note beside the photographs")
    (folder / "scan.gif").write_bytes(b"GIF89a")
    (folder / "._0_right.jpg").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource-fork copy
    (folder / ".thumbs").mkdir()
    fundus(64, None, seed=51)[0].save(folder / ".thumbs" / "0_right.jpg")
    (folder / "moved.jpg").symlink_to(tmp_path / "archive" / "moved.jpg")  # its target moved away

    out = tmp_path / "predictions.csv"
    assert (
        main(
            ["predict", str(folder), "--checkpoint", str(checkpoints[0]), "--out", str(out), "--no-progress"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "left aside, not images by their names: 2 files (" in err and ".txt: 1" in err and ".gif: 1" in err
    names = {row["file"].split("/")[-1] for row in rows(out)}
    assert "extra.webp" in names and "broken.jpg" in names  # a bad image with an image's name is reported
    moved = next(row for row in rows(out) if row["file"].endswith("moved.jpg"))
    assert "moved.jpg: broken link (to " in moved["error"] and "which does not exist" in moved["error"]
    assert not any(row["file"].count("/.") for row in rows(out))  # hidden files are not photographs

    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "readme.txt").write_text("no photographs here")
    for command in ("predict", "explain"):
        assert (
            main([command, str(empty), "--checkpoint", str(checkpoints[0]), "--out", str(tmp_path / command)])
            == 2
        )
        err = capsys.readouterr().err
        assert f"no image files in {empty}" in err and "readme.txt" not in err and ".txt: 1" in err


def test_predict_shows_a_few_rows_and_what_predicted_and_referable_mean(
    checkpoints, folder, tmp_path, capsys
):
    from eyescreen.calibrate import describe_outputs
    from eyescreen.checkpoint import load_model
    from eyescreen.cli import main

    few = tmp_path / "few"
    few.mkdir()
    for name in ("0_right.jpg", "0_left.jpg", "broken.jpg"):
        shutil.copy(folder / name, few / name)
    out = tmp_path / "few.csv"
    assert (
        main(["predict", str(few), "--checkpoint", str(checkpoints[0]), "--out", str(out), "--no-progress"])
        == 0
    )
    shown = capsys.readouterr().out.splitlines()
    header = next(line.split() for line in shown if line.startswith("file "))
    _, meta = load_model(checkpoints[0], "cpu")
    flag = ["referable"] if "referable" in meta.get("calibration", {}) else []
    assert header == ["file", "predicted"] + [f"prob_{c}" for c in meta["classes"]] + flag + ["error"]
    for row in rows(out):  # each file's row, its probabilities rounded to three places
        line = next(line for line in shown if line.startswith(row["file"]))
        first = row["prob_" + meta["classes"][0]]
        assert (f"{float(first):.3f}" if first else row["error"]) in line
    legend = describe_outputs(meta.get("calibration"))
    assert (
        legend and shown[-len(legend) :] == legend
    )  # this checkpoint is calibrated: it has a flag to explain

    for i in (20, 21):  # 21 files: the summary line only, no table
        fundus(64, None, seed=i)[0].save(folder / f"{i}_right.jpg")
    many = tmp_path / "many.csv"
    assert main(["predict", str(folder), "--checkpoint", str(checkpoints[0]), "--out", str(many), "--no-progress",
                 "--batch-size", "4"]) == 0  # fmt: skip
    assert not any(line.startswith("file ") for line in capsys.readouterr().out.splitlines())


def test_the_console_says_what_predicted_and_referable_mean_at_this_checkpoints_operating_points():
    from eyescreen.calibrate import describe_outputs

    calibration = {
        "decision": {"prior_power": 1.25, "class_weights": [2.0, 4.0, 43.0, 49.0]},
        "referable": {"normal_class": "normal", "threshold": 0.4044, "target_specificity": 0.9,
                      "sensitivity": 0.512, "specificity": 0.902},
    }  # fmt: skip
    predicted, referable = describe_outputs(calibration)
    assert (
        predicted.startswith("predicted: ") and "prior^-1.25" in predicted and "low probability" in predicted
    )
    assert referable.startswith("referable: 1 - P(normal) > 0.404") and "90% specificity" in referable
    assert "0.51" in referable
    calibration["decision"]["prior_power"] = 0.0  # plain arg-max: nothing to explain about `predicted`
    assert [line.split(":")[0] for line in describe_outputs(calibration)] == ["referable"]
    assert describe_outputs(None) == [] and describe_outputs({}) == []
    older = {"referable": {"normal_class": "normal", "threshold": 0.5}}  # no operating point recorded
    assert describe_outputs(older) == [
        "referable: 1 - P(normal) > 0.500: the screening flag, which may disagree with `predicted`"
    ]


def test_predict_points_to_pairs_when_both_eyes_of_a_patient_are_given(checkpoints, folder, tmp_path, capsys):
    from eyescreen.checkpoint import load_model, save_model
    from eyescreen.cli import main

    model, meta = load_model(checkpoints[0], "cpu")
    few = tmp_path / "few"
    few.mkdir()
    for name in ("0_right.jpg", "0_left.jpg", "1_right.jpg"):
        shutil.copy(folder / name, few / name)
    for weight in (0.3, 0.0):
        meta["calibration"]["fellow_eye"] = {"weight": weight}
        save_model(tmp_path / f"w{weight}.safetensors", model, meta)
        args = [
            "predict",
            str(few),
            "--checkpoint",
            str(tmp_path / f"w{weight}.safetensors"),
            "--no-progress",
        ]
        assert main(args + ["--out", str(tmp_path / f"w{weight}.csv")]) == 0
        hint = [line for line in capsys.readouterr().out.splitlines() if "predict --pairs" in line]
        if weight:  # patient 0 has both eyes here; patient 1 one
            assert hint == [
                "1 patient(s) have both eyes here: `predict --pairs` blends each eye with its fellow "
                "(weight 0.30 for this checkpoint, fitted on validation)"
            ]
        else:  # nothing to blend: no hint
            assert hint == []


def test_a_batch_with_many_bad_files_prints_a_few_and_keeps_them_all(checkpoints, folder, tmp_path, capsys):
    """A folder where most files fail (another camera's format, a copy gone wrong) must not bury the
    console: the first few problems are printed, then how many more and where every one is kept."""
    from eyescreen.batch_output import SHOWN
    from eyescreen.cli import main

    best, _ = checkpoints
    for i in range(SHOWN + 5):
        (folder / f"broken{i:02d}.jpg").write_bytes(b"")  # with broken.jpg: SHOWN + 6 bad files
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(folder), "--checkpoint", str(best), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("could not read: ") and ".jpg" in line for line in err) == SHOWN
    assert f"could not read: 6 more not shown; all {SHOWN + 6} are in the 'error' column of {out}" in err
    assert (
        sum(bool(r["error"]) for r in rows(out)) == SHOWN + 6 and sum(not r["error"] for r in rows(out)) == 18
    )

    # explain has no row for a file it could not read: every one goes to unreadable.txt
    explained = tmp_path / "explained"
    args = ["explain", str(folder), "--checkpoint", str(best), "--out", str(explained), "--no-progress"]
    assert main(args) == 0
    listed = (explained / "unreadable.txt").read_text().splitlines()
    assert len(listed) == SHOWN + 6 and all(".jpg" in line for line in listed)
    assert f"are in {explained / 'unreadable.txt'}" in capsys.readouterr().err
    for i in range(SHOWN + 5):
        (folder / f"broken{i:02d}.jpg").unlink()
    (folder / "broken.jpg").unlink()
    assert main(args) == 0
    assert not (explained / "unreadable.txt").exists()  # an earlier run's list does not outlive its files


def test_a_resumed_predict_counts_the_warnings_of_the_rows_it_kept(checkpoints, tmp_path, capsys):
    """The console's warning count is the job's: rows kept from the interrupted run count too."""
    from synthetic import everyday_photo

    best, _ = checkpoints
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        everyday_photo(folder / f"holiday{i}.jpg")
    out = tmp_path / "out.csv"
    first = predict([folder / "holiday0.jpg"], best, out, progress=False)
    assert len(first["warnings"]) == 1
    capsys.readouterr()
    resumed = predict([folder], best, out, progress=False, resume=True)
    assert resumed["resumed"] == 1 and resumed["predicted"] == 2
    assert len(resumed["warnings"]) == 3
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 3 and any("holiday0.jpg" in line for line in warned)


def test_progress_bars_show_on_a_terminal_only(checkpoints, folder, tmp_path, capsys, monkeypatch):
    """A log file or a pipe gets no bar (its carriage returns would make one long line of the log)."""
    import sys

    from eyescreen.cli import main

    args = ["predict", str(folder), "--checkpoint", str(checkpoints[0]), "--out"]
    assert main(args + [str(tmp_path / "a.csv")]) == 0
    assert "predicting:" not in capsys.readouterr().err  # pytest's capture is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(args + [str(tmp_path / "b.csv")]) == 0
    assert "predicting:" in capsys.readouterr().err
    assert main(args + [str(tmp_path / "c.csv"), "--no-progress"]) == 0
    assert "predicting:" not in capsys.readouterr().err
