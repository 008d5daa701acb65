"""`eyescreen pretrain` (SimCLR on all photographs, labelled or not) and `train --init`."""

import json

import pytest
import torch
from safetensors.torch import load_file

from eyescreen.checkpoint import CheckpointError, read_meta
from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.initial_weights import load_initial_weights
from eyescreen.models import create_model
from eyescreen.pretrain import PretrainConfig, image_paths, nt_xent, pretrain
from eyescreen.train import train
from interrupt import interrupted_after_saves


def test_nt_xent_rewards_matching_views():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    matched = nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.2)
    shuffled = nt_xent(z, torch.randn(8, 16), 0.2)
    assert matched < 0.5 < shuffled


def test_pretrain_uses_unlabelled_images_resumes_and_initialises_training(
    synthetic_manifest, tmp_path, monkeypatch, capsys
):
    paths = image_paths([synthetic_manifest])
    rows = synthetic_manifest.read_text().splitlines()[1:]
    assert len(paths) == len(rows)  # every row, the unlabelled ones included
    cfg = PretrainConfig(model="tiny-cnn", image_size=40, epochs=2, batch_size=16, precision="fp32")
    weights = pretrain(cfg, [synthetic_manifest], tmp_path / "ssl", progress=False)
    meta = read_meta(weights)
    assert meta["kind"] == "pretrained" and meta["pretrain"]["images"] == len(paths) and meta["epoch"] == 2
    epoch_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "left)" in epoch_lines[0] and "left)" not in epoch_lines[1]
    with pytest.raises(FileExistsError):
        pretrain(cfg, [synthetic_manifest], tmp_path / "ssl", progress=False)

    # Resume: a run interrupted after its first epoch ends with the same weights as the full one.
    import eyescreen.pretrain as module

    with interrupted_after_saves(monkeypatch, module):
        pretrain(cfg, [synthetic_manifest], tmp_path / "ssl2", progress=False)
    pretrain(cfg, [synthetic_manifest], tmp_path / "ssl2", resume=True, progress=False)
    a = load_file(str(tmp_path / "ssl2" / "pretrained.safetensors"))
    b = load_file(str(weights))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Fine-tuning starts from the pre-trained weights, all but the classifier layer.
    model = create_model("tiny-cnn", 3)
    said = load_initial_weights(model, weights, "tiny-cnn", ["a", "b", "c"])
    copied = int(said.split()[1])
    assert said.endswith("(without its classifier layer)")
    state, pre = model.state_dict(), load_file(str(weights))
    assert 0 < copied < len(state)
    same = [k for k in state if k in pre and pre[k].shape == state[k].shape]
    assert len(same) == copied and all(torch.equal(state[k], pre[k]) for k in same)
    with pytest.raises(CheckpointError, match="pre-trained tiny-cnn, but this run trains seed-cnn"):
        load_initial_weights(create_model("seed-cnn", 3), weights, "seed-cnn", ["a", "b", "c"])

    run = tmp_path / "fine"
    tiny = preset(
        "quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32", init=str(weights)
    )
    train(tiny, synthetic_manifest, run, progress=False)
    assert json.loads((run / "config.json").read_text())["config"]["init"] == str(weights)


def test_pretrain_cli(synthetic_manifest, tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "none")]) == 2  # no photographs given
    assert "give the photographs" in capsys.readouterr().err
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken.jpg").write_bytes(b"not an image")
    rc = main(["pretrain", "--data", str(synthetic_manifest), str(extra), "--out", str(tmp_path / "p"), "--model",
               "tiny-cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--precision", "fp32",
               "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0 and "--init" in captured.out
    # an unreadable photograph is named on the console and listed where the run keeps its files
    assert f"{extra / 'broken.jpg'}: not a readable image" in captured.err
    assert (tmp_path / "p" / "unreadable.txt").read_text().count("broken.jpg") == 1
    rc = main(["train", "--data", str(synthetic_manifest), "--out", str(tmp_path / "t"), "--preset", "quick",
               "--model", "seed-cnn", "--init", str(tmp_path / "p"), "--no-progress"])  # fmt: skip
    assert rc == 2  # a clear error, not a traceback: the pre-trained model (the folder's) is not seed-cnn
    assert f"{tmp_path / 'p' / 'pretrained.safetensors'}: pre-trained tiny-cnn" in capsys.readouterr().err

    # what it is, asked of its folder; and not taken for a classifier by the commands that need one
    assert main(["info", str(tmp_path / "p")]) == 0
    card = capsys.readouterr().out
    assert "tiny-cnn backbone, pre-trained by `eyescreen pretrain` (simclr" in card and "epoch 1 of 1" in card
    assert f"--init {tmp_path / 'p' / 'pretrained.safetensors'}" in card
    for argv in (["predict", str(extra)], ["evaluate"], ["export"]):
        rc = main([argv[0], "--checkpoint", str(tmp_path / "p" / "pretrained.safetensors"), *argv[1:]])
        assert rc == 2, argv
        assert "not a trained classifier (no classes); fine-tune them first" in capsys.readouterr().err


def test_holdout_split_leaves_out_every_photograph_of_validation_and_test_patients(
    synthetic_manifest, tmp_path
):
    from eyescreen.data import load_dataset, make_split, read_manifest, write_split
    from eyescreen.pretrain import holdout_patients

    dataset = load_dataset(synthetic_manifest)
    split_file = tmp_path / "split.csv"
    write_split(make_split(dataset, 0.2, 0.2, seed=0), dataset, split_file)
    held = holdout_patients(split_file)
    rows = read_manifest(synthetic_manifest)
    assert held and held < {r.group for r in rows}
    kept = set(image_paths([synthetic_manifest], held))
    # Unlabelled photographs of held-out patients (they have no split row) are left out too.
    assert kept == {r.path for r in rows if r.group not in held}
    with pytest.raises(ValueError, match="split file"):
        holdout_patients(synthetic_manifest)


def test_copies_of_held_out_photographs_under_other_ids_or_names_are_left_out_too(tmp_path, capsys):
    import csv

    from PIL import Image

    from eyescreen.data import load_dataset, make_split, write_split
    from synthetic import write_dataset

    manifest = write_dataset(tmp_path / "data", patients=12)
    dataset = load_dataset(manifest)
    split = make_split(dataset, 0.2, 0.2, seed=0)
    write_split(split, dataset, tmp_path / "split.csv")
    held = [r for r in dataset.records if split[r.key] != "train"]
    trained = [r for r in dataset.records if split[r.key] == "train"]
    # a held-out eye under another patient id (PNG), another in a folder of unlabelled photographs; a
    # training eye's copy stays
    Image.open(held[0].path).save(tmp_path / "data" / "images" / "77_left.png")
    with open(manifest, "a", newline="") as f:
        csv.writer(f).writerow(["images/77_left.png", 77, "left", ""])
    (tmp_path / "loose").mkdir()
    Image.open(held[1].path).save(tmp_path / "loose" / "a.jpg", quality=95)
    Image.open(trained[0].path).save(tmp_path / "loose" / "b.jpg", quality=95)
    cfg = PretrainConfig(model="tiny-cnn", image_size=40, epochs=1, batch_size=16, precision="fp32",
                         holdout_split=str(tmp_path / "split.csv"))  # fmt: skip
    weights = pretrain(cfg, [manifest, tmp_path / "loose"], tmp_path / "ssl", progress=False)
    settings = read_meta(weights)["pretrain"]
    assert settings["images"] == len(trained) + 1 and settings["holdout_linked"] == 2
    assert "with 2 photographs of their eyes under other ids or names" in capsys.readouterr().out


def test_sigterm_during_pretraining_finishes_and_writes_the_epoch(synthetic_manifest, tmp_path, monkeypatch):
    import os
    import signal

    import eyescreen.pretrain as module
    from eyescreen.checkpoint import load_state
    from eyescreen.stopping import StopRequested

    real = module.time_left  # called once an epoch, before that epoch is written

    def term_at_epoch_1(paces, epochs):
        if len(paces) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(paces, epochs)

    monkeypatch.setattr(module, "time_left", term_at_epoch_1)
    cfg = PretrainConfig(model="tiny-cnn", image_size=40, epochs=3, batch_size=16, precision="fp32")
    with pytest.raises(StopRequested, match=r"stopped \(SIGTERM\) after epoch 1 of 3") as stopped:
        pretrain(cfg, [synthetic_manifest], tmp_path / "ssl", progress=False)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert load_state(tmp_path / "ssl" / "pretrain-resume.pt")["epoch"] == 0
    assert read_meta(tmp_path / "ssl" / "pretrained.safetensors")["epoch"] == 1


def test_time_budget_keeps_the_epochs_that_fit_ends_the_schedule_at_zero_and_resumes_so(
    synthetic_manifest, tmp_path, monkeypatch, capsys
):
    import eyescreen.pace as pace
    import eyescreen.pretrain as module
    from eyescreen.checkpoint import load_state

    real, seen = pace.epochs_within, []

    def as_if_100_s_an_epoch(budget_s, elapsed_s, epoch_s, done, asked):
        seen.append((budget_s, done, asked))
        return real(budget_s, 100.0, 100.0, done, asked)  # a slow machine: one epoch took 100 s

    monkeypatch.setattr(pace, "epochs_within", as_if_100_s_an_epoch)
    cfg = PretrainConfig(model="tiny-cnn", image_size=40, epochs=6, batch_size=16, precision="fp32",
                         lr=0.01, time_budget=5)  # fmt: skip  # 300 s: the first epoch and 2 more
    with interrupted_after_saves(monkeypatch, module, saves=2):
        pretrain(cfg, [synthetic_manifest], tmp_path / "ssl", progress=False)
    assert seen == [(300, 1, 6)]
    said = capsys.readouterr().out
    assert "time budget 5 min" in said and "3 of the 6 epochs asked fit" in said
    state = load_state(tmp_path / "ssl" / "pretrain-resume.pt")
    assert state["budget"]["epochs"] == 3 and json.loads(state["config"])["epochs"] == 3
    # the second epoch ran at a 3-epoch schedule's rate (a 6-epoch one would be 0.01 * 0.93)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.75)

    pretrain(None, [synthetic_manifest], tmp_path / "ssl", resume=True, progress=False)  # not decided again
    assert len(seen) == 1
    state = load_state(tmp_path / "ssl" / "pretrain-resume.pt")
    assert state["epoch"] == 2 and state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.25)
    meta = read_meta(tmp_path / "ssl" / "pretrained.safetensors")
    assert meta["epoch"] == 3 and meta["pretrain"]["epochs"] == 3
    assert meta["pretrain"]["budget"]["epochs_asked"] == 6
    assert main(["info", str(tmp_path / "ssl")]) == 0
    card = capsys.readouterr().out
    assert "epoch 3 of 3" in card and "time budget: 5 min, in which 3 of the 6 epochs asked fit" in card


def test_pre_training_that_slows_after_the_first_epoch_is_shortened_again(synthetic_manifest, tmp_path,
                                                                       monkeypatch, capsys):  # fmt: skip
    import eyescreen.pace as pace
    from test_time_budget import _as_if_started

    real_decision, real_revision = pace.budget_decision, pace.budget_revision

    def paced(history):  # as if the first epoch took 90 s and every later one 180 s
        return [row | {"seconds": 90.0 if row["epoch"] == 1 else 180.0} for row in history]

    monkeypatch.setattr(pace, "budget_decision", lambda minutes, asked, history, resumed, started: real_decision(
        minutes, asked, paced(history), resumed, _as_if_started(90)))  # fmt: skip
    monkeypatch.setattr(pace, "budget_revision", lambda budget, history, resumed, started: real_revision(
        budget, paced(history), resumed, _as_if_started(sum(r["seconds"] for r in paced(history)))))  # fmt: skip
    cfg = PretrainConfig(model="tiny-cnn", image_size=32, epochs=8, batch_size=16, precision="fp32",
                         time_budget=10)  # fmt: skip  # 6 epochs fit at 90 s, 4 once they take 180 s
    pretrain(cfg, [synthetic_manifest], tmp_path / "ssl", progress=False)
    said = capsys.readouterr().out
    assert "6 of the 8 epochs asked fit" in said and "slowed to 135 s" in said
    meta = read_meta(tmp_path / "ssl" / "pretrained.safetensors")
    assert meta["epoch"] == 4 and meta["pretrain"]["epochs"] == 4
    assert [r["after_epoch"] for r in meta["pretrain"]["budget"]["revisions"]] == [2]


def test_time_budget_spent_by_the_first_epoch_ends_there_and_a_negative_one_is_refused(
    synthetic_manifest, tmp_path, capsys
):
    argv = ["pretrain", "--data", str(synthetic_manifest), "--model", "tiny-cnn", "--image-size", "32",
            "--epochs", "4", "--batch-size", "8", "--precision", "fp32", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "p"), "--time-budget", "0.0001"]) == 0
    assert "1 of the 4 epochs asked fit" in capsys.readouterr().out
    assert read_meta(tmp_path / "p" / "pretrained.safetensors")["epoch"] == 1
    assert main([*argv, "--out", str(tmp_path / "q"), "--time-budget", "-1"]) == 2
    assert "time_budget must be zero (no limit) or more minutes" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
