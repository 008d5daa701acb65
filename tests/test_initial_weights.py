"""`train --init` from a trained checkpoint: fine-tuning at another input size or on other data."""

import pytest
import torch
from safetensors.torch import load_file

from eyescreen.checkpoint import read_meta
from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.initial_weights import load_initial_weights
from eyescreen.models import create_model
from eyescreen.train import train


@pytest.fixture(scope="module")
def trained(synthetic_manifest, tmp_path_factory):
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32")
    return train(cfg, synthetic_manifest, tmp_path_factory.mktemp("run") / "small", progress=False)


def test_same_classes_copy_everything_other_classes_leave_the_classifier(trained):
    classes = read_meta(trained)["classes"]
    source = load_file(str(trained))
    model = create_model("tiny-cnn", len(classes))
    said = load_initial_weights(model, trained, "tiny-cnn", classes)
    assert said.endswith("(with its classifier layer)")
    state = model.state_dict()
    assert set(state) == set(source) and all(torch.equal(state[k], source[k]) for k in state)

    model = create_model("tiny-cnn", len(classes))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    said = load_initial_weights(model, trained, "tiny-cnn", list(reversed(classes)))
    assert said.endswith("(without its classifier layer)")
    state = model.state_dict()
    head = [k for k in state if k.startswith(model.head_layer + ".")]
    assert head and all(
        torch.equal(state[k], before[k]) for k in head
    )  # same shape, other classes: untouched
    body = [k for k in state if k not in head]
    assert body and all(torch.equal(state[k], source[k]) for k in body)


def test_a_both_eye_model_starts_from_a_single_eye_checkpoint(trained, tmp_path):
    classes = read_meta(trained)["classes"]
    source = load_file(str(trained))
    model = create_model("tiny-cnn-binocular", len(classes))
    load_initial_weights(model, trained, "tiny-cnn-binocular", classes)
    state = model.state_dict()
    backbone = [k for k in state if k.startswith("backbone.") and k.removeprefix("backbone.") in source]
    assert backbone and all(torch.equal(state[k], source[k.removeprefix("backbone.")]) for k in backbone)
    # same classes: the single-eye head becomes the eye head (applied to each eye); the patient head is new
    head = model.backbone.head_layer
    assert torch.equal(state["head_eye.weight"], source[f"{head}.weight"])
    assert torch.equal(state["head_eye.bias"], source[f"{head}.bias"])

    # and back: a both-eye checkpoint's eye head starts a single-eye model of the same classes
    from eyescreen.checkpoint import save_model

    both = tmp_path / "both.safetensors"
    save_model(both, model, {"model": {"name": "tiny-cnn-binocular", "args": {"num_classes": len(classes)}},
                             "classes": classes})  # fmt: skip
    single = create_model("tiny-cnn", len(classes))
    assert load_initial_weights(single, both, "tiny-cnn", classes).endswith("(with its classifier layer)")
    assert torch.equal(single.state_dict()[f"{head}.weight"], state["head_eye.weight"])


def test_fine_tuning_at_a_larger_input_size_from_the_cli(trained, synthetic_manifest, tmp_path, capsys):
    out = tmp_path / "large"
    rc = main(["train", "--data", str(synthetic_manifest), "--out", str(out), "--preset", "quick",
               "--model", "tiny-cnn", "--image-size", "48", "--epochs", "1", "--batch-size", "8",
               "--precision", "fp32", "--init", str(trained), "--no-progress"])  # fmt: skip
    assert rc == 0
    assert f"from {trained} (with its classifier layer)" in capsys.readouterr().out
    meta = read_meta(out / "best.safetensors")
    assert meta["config"]["init"] == str(trained) and meta["preprocessing"]["image_size"] == 48

    rc = main(["train", "--data", str(synthetic_manifest), "--out", str(tmp_path / "from-folder"), "--preset", "quick",
               "--model", "tiny-cnn", "--image-size", "48", "--epochs", "1", "--batch-size", "8",
               "--precision", "fp32", "--init", str(trained.parent), "--no-progress"])  # fmt: skip
    assert rc == 0  # the run folder stands for its best checkpoint, and the run records which file
    assert f"from {trained} (with its classifier layer)" in capsys.readouterr().out
    assert read_meta(tmp_path / "from-folder" / "best.safetensors")["config"]["init"] == str(trained)

    rc = main(["train", "--data", str(synthetic_manifest), "--out", str(tmp_path / "other"), "--preset", "quick",
               "--model", "seed-cnn", "--init", str(trained), "--no-progress"])  # fmt: skip
    assert rc == 2  # a clear error, not a traceback
    assert "trained tiny-cnn, but this run trains seed-cnn" in capsys.readouterr().err


def test_a_fine_tuning_preset_asks_for_the_run_it_fine_tunes(synthetic_manifest, tmp_path, capsys):
    rc = main(["train", "--data", str(synthetic_manifest), "--out", str(tmp_path / "ft"), "--preset", "finetune-224",
               "--model", "tiny-cnn", "--no-progress"])  # fmt: skip
    assert rc == 2
    assert "preset finetune-224 fine-tunes a trained model: give --init" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()
    with pytest.raises(ValueError, match="give --init"):  # the same from Python
        preset("finetune-224", epochs=3)
    assert preset("finetune-224", init="runs/x/best.safetensors").image_size == 224
    assert main(["presets"]) == 0
    assert (
        "finetune-224 (second stage: --init RUN/best.safetensors of a graham-findings run)"
        in capsys.readouterr().out
    )


def test_no_fine_tuning_from_a_model_that_trained_on_this_runs_held_out_images(
    trained, synthetic_manifest, tmp_path, capsys
):
    args = ["train", "--data", str(synthetic_manifest), "--preset", "quick", "--model", "tiny-cnn",
            "--image-size", "40", "--epochs", "1", "--precision", "fp32", "--init", str(trained), "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "reshuffled"), "--seed", "3"]) == 2  # another split
    err = capsys.readouterr().err
    assert "that this run holds out for validation or test" in err
    assert f"--split {trained.parent / 'split.csv'}" in err
    split = ["--split", str(trained.parent / "split.csv")]
    assert main([*args, "--out", str(tmp_path / "same"), "--seed", "3", *split]) == 0


def test_a_copy_of_the_data_elsewhere_is_the_same_data(trained, synthetic_manifest, tmp_path, capsys):
    """Data moved to another disk or machine (same manifest bytes, another path) is recognised: the
    held-out check still refuses a checkpoint that trained on this run's validation or test images."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(synthetic_manifest.parent, copy)
    args = ["train", "--data", str(copy / synthetic_manifest.name), "--preset", "quick", "--model", "tiny-cnn",
            "--image-size", "40", "--epochs", "1", "--precision", "fp32", "--init", str(trained), "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "reshuffled"), "--seed", "3"]) == 2
    assert "that this run holds out for validation or test" in capsys.readouterr().err
    (copy / synthetic_manifest.name).write_text((copy / synthetic_manifest.name).read_text() + "\n")
    assert main([*args, "--out", str(tmp_path / "other"), "--seed", "3"]) == 0  # other bytes: other data


def test_a_both_eye_model_of_other_classes_leaves_both_class_layers(tmp_path):
    from eyescreen.checkpoint import save_model

    torch.manual_seed(0)
    source_model = create_model("tiny-cnn-binocular", 3)
    path = tmp_path / "both.safetensors"
    meta = {"model": {"name": "tiny-cnn-binocular", "args": {"num_classes": 3}}, "classes": ["a", "b", "c"]}
    save_model(path, source_model, meta)
    torch.manual_seed(1)
    model = create_model("tiny-cnn-binocular", 3)
    said = load_initial_weights(
        model, path, "tiny-cnn-binocular", ["x", "y", "z"]
    )  # same count, other classes
    assert said.endswith("(without its classifier layer)")
    state, source = model.state_dict(), source_model.state_dict()
    for key in state:
        copied = torch.equal(state[key], source[key])
        assert copied != key.startswith(("head_eye.", "head_patient.")), key
