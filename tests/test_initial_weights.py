"""`train --init` from a trained checkpoint: fine-tuning at another input size or on other data."""

import pytest
import torch
from safetensors.torch import load_file

from eyescreen.checkpoint import read_meta
from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.findings import classifier_head
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
    head = [k for k in state if k.startswith(classifier_head(model) + ".")]
    assert head and all(
        torch.equal(state[k], before[k]) for k in head
    )  # same shape, other classes: untouched
    body = [k for k in state if k not in head]
    assert body and all(torch.equal(state[k], source[k]) for k in body)


def test_a_both_eye_model_starts_from_a_single_eye_checkpoint(trained):
    classes = read_meta(trained)["classes"]
    source = load_file(str(trained))
    model = create_model("tiny-cnn-binocular", len(classes))
    load_initial_weights(model, trained, "tiny-cnn-binocular", classes)
    state = model.state_dict()
    backbone = [k for k in state if k.startswith("backbone.") and k.removeprefix("backbone.") in source]
    assert backbone and all(torch.equal(state[k], source[k.removeprefix("backbone.")]) for k in backbone)


def test_fine_tuning_at_a_larger_input_size_from_the_cli(trained, synthetic_manifest, tmp_path, capsys):
    out = tmp_path / "large"
    rc = main(["train", "--data", str(synthetic_manifest), "--out", str(out), "--preset", "quick",
               "--model", "tiny-cnn", "--image-size", "48", "--epochs", "1", "--batch-size", "8",
               "--precision", "fp32", "--init", str(trained), "--no-progress"])  # fmt: skip
    assert rc == 0
    assert f"from {trained} (with its classifier layer)" in capsys.readouterr().out
    meta = read_meta(out / "best.safetensors")
    assert meta["config"]["init"] == str(trained) and meta["preprocessing"]["image_size"] == 48

    rc = main(["train", "--data", str(synthetic_manifest), "--out", str(tmp_path / "other"), "--preset", "quick",
               "--model", "seed-cnn", "--init", str(trained), "--no-progress"])  # fmt: skip
    assert rc == 2  # a clear error, not a traceback
    assert "trained tiny-cnn, but this run trains seed-cnn" in capsys.readouterr().err
