"""`eyescreen info`: a checkpoint described from its own metadata, for whoever receives the file."""

import csv
import json
import shutil
from collections import Counter

import pytest

from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.model_card import card_lines, closest_preset, describe_checkpoint
from eyescreen.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from synthetic import write_dataset

    root = tmp_path_factory.mktemp("card")
    manifest = write_dataset(root / "data", patients=30)
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, seed=3, precision="fp32")
    train(cfg, manifest, root / "run", progress=False)
    return root / "run", manifest


def test_the_card_says_what_the_model_is_and_what_it_learnt_from(run, tmp_path, capsys):
    out, manifest = run
    card = describe_checkpoint(out / "best.safetensors")
    assert card["model"] == "tiny-cnn" and not card["both_eye_model"]
    assert card["classes"] == ["blob", "normal", "spots"] and card["preprocessing"]["image_size"] == 40
    # the recipe as a preset and what was changed (how it ran, e.g. fp32, is not part of it)
    assert card["recipe"] == {
        "closest_preset": "quick",
        "differs_in": {"model": "tiny-cnn", "image_size": 40, "epochs": 1, "batch_size": 8, "seed": 3},
    }
    with open(out / "split.csv", newline="") as f:
        assert card["split_images"] == dict(Counter(row["split"] for row in csv.DictReader(f)))
    assert card["data_here"] == "the same file"
    assert (
        set(card["validation"]) >= {"macro_auc", "balanced_accuracy"} and "temperature" in card["calibration"]
    )

    assert main(["info", str(out / "best.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "recipe: preset quick with model='tiny-cnn', image_size=40, epochs=1, batch_size=8, seed=3" in text
    assert f"trained on: {manifest} (the same file)" in text
    assert "caution: " in text and "validation images" in text  # a handful of validation eyes
    assert "calibration: temperature " in text and "referable: 1 - P(normal) > " in text
    assert "trained with: eyescreen " in text and " on cpu, fp32, started " in text  # run_info.json beside it
    assert "--subset test" in text  # where the test numbers come from
    assert main(["info", str(out / "best.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == card["sha256"]
    # a temperature at the top of its search range is explained, not only printed
    flat = card | {"calibration": card["calibration"] | {"temperature": 20.0}}
    assert any("at the top of its range (20)" in line for line in card_lines(flat))
    inside = card | {"calibration": card["calibration"] | {"temperature": 1.3}}
    assert not any("of its range" in line for line in card_lines(inside))


def test_the_card_says_when_the_training_data_changed_or_is_gone(run, tmp_path):
    out, manifest = run
    moved = tmp_path / "run"
    shutil.copytree(out, moved)
    (moved / "run_info.json").unlink()  # a checkpoint away from its run directory: no run record
    assert describe_checkpoint(moved / "best.safetensors")["run"] is None
    saved = manifest.read_bytes()
    try:
        manifest.write_bytes(saved + b"images/0_left.jpg,0,left,normal\n")
        assert describe_checkpoint(moved / "best.safetensors")["data_here"] == "changed since training"
        manifest.unlink()
        card = describe_checkpoint(moved / "best.safetensors")
        assert card["data_here"] == "not found on this machine"
        assert any("take --data for its new place" in line for line in card_lines(card))
    finally:
        manifest.write_bytes(saved)


def test_closest_preset_of_each_preset_is_itself():
    import dataclasses

    from eyescreen.config import PRESETS, preset_settings

    for name in PRESETS:
        found, changes = closest_preset(dataclasses.asdict(preset_settings(name)))
        assert (found, changes) == (name, {})


def test_info_on_a_file_that_is_not_a_checkpoint_names_it(tmp_path, capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_text("not a checkpoint")
    assert main(["info", str(bad)]) == 2
    assert f"eyescreen info: error: {bad}: not a readable safetensors checkpoint" in capsys.readouterr().err


def test_a_run_folder_stands_for_its_best_checkpoint(run, tmp_path, capsys):
    out, _ = run
    assert main(["info", str(out)]) == 0
    assert f"checkpoint: {out / 'best.safetensors'} (" in capsys.readouterr().out
    empty = tmp_path / "not-yet-a-run"
    empty.mkdir()
    assert main(["info", str(empty)]) == 2
    assert f"{empty}: a folder without a best.safetensors" in capsys.readouterr().err


def test_a_run_started_from_the_command_line_shows_its_command(run, tmp_path, monkeypatch, capsys):
    import sys

    _, manifest = run
    out = tmp_path / "cli-run"
    argv = ["eyescreen", "train", "--data", str(manifest), "--out", str(out), "--preset", "quick",
            "--model", "tiny-cnn", "--image-size", "40", "--epochs", "1", "--precision", "fp32", "--no-progress"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)  # what a shell hands the command
    assert main(argv[1:]) == 0
    capsys.readouterr()
    assert main(["info", str(out / "best.safetensors")]) == 0
    assert f"command: eyescreen train --data {manifest} --out {out} --preset quick" in capsys.readouterr().out
