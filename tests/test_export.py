import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from eyescreen.checkpoint import load_model, save_model
from eyescreen.cli import main
from eyescreen.explain import as_predicted
from eyescreen.models import create_model


def test_onnx_export_matches_pytorch_probabilities(tmp_path):
    torch.manual_seed(0)
    model = create_model("seed-cnn", num_classes=3).eval()
    meta = {
        "model": {"name": "seed-cnn", "args": {"num_classes": 3}},
        "classes": ["a", "b", "c"],
        "preprocessing": {"image_size": 64, "version": 1},
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "calibration": {"temperature": 2.0, "decision": {"class_weights": [1.0, 3.0, 0.5]}},
    }
    save_model(tmp_path / "m.safetensors", model, meta)
    assert (
        main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "m.onnx")])
        == 0
    )
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    (onnx_prob,) = session.run(None, {"image": x})
    loaded, _ = load_model(tmp_path / "m.safetensors")
    with torch.no_grad():
        torch_prob = torch.softmax(loaded(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(onnx_prob, torch_prob, atol=1e-4)
    described = json.loads(session.get_modelmeta().custom_metadata_map["eyescreen"])
    assert described["classes"] == ["a", "b", "c"] and described["normalization"]["std"] == [0.25] * 3
    # with the calibration, another runtime names the class `predict` names
    assert described["calibration"] == meta["calibration"]
    (onnx_shown, onnx_class), (torch_shown, torch_class) = (
        as_predicted(onnx_prob, described),
        as_predicted(torch_prob, meta),
    )
    np.testing.assert_array_equal(onnx_class, torch_class)
    np.testing.assert_allclose(onnx_shown, torch_shown, atol=1e-4)


@pytest.mark.parametrize("pooling", ["attention", "max"])
def test_a_both_eye_export_matches_pytorch_with_an_eye_missing(tmp_path, pooling):
    torch.manual_seed(0)
    args = {"num_classes": 3, "pooling": pooling, "mirror_left": True}
    model = create_model("tiny-cnn-binocular", **args).eval()
    meta = {
        "model": {"name": "tiny-cnn-binocular", "args": args},
        "classes": ["a", "b", "c"],
        "preprocessing": {"image_size": 32, "version": 1},
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }
    save_model(tmp_path / "both.safetensors", model, meta)
    assert main(["export", "--checkpoint", str(tmp_path / "both.safetensors")]) == 0
    session = ort.InferenceSession(str(tmp_path / "both.onnx"))
    images = np.random.default_rng(0).standard_normal((4, 2, 3, 32, 32)).astype(np.float32)
    present = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    images[present == 0] = 0.0  # an absent eye: whatever the caller sends, it must not count
    prob, eye_prob = session.run(None, {"images": images, "present": present})
    with torch.no_grad():
        eye_logits, logits = model(torch.from_numpy(images), torch.from_numpy(present > 0))
    np.testing.assert_allclose(prob, torch.softmax(logits, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(eye_prob, torch.softmax(eye_logits, -1).numpy(), atol=1e-5)
    images[1, 1] = 7.0  # the absent left eye of patient 1 changed: its decision does not move
    np.testing.assert_allclose(
        session.run(None, {"images": images, "present": present})[0][1], prob[1], atol=1e-6
    )
    assert json.loads(session.get_modelmeta().custom_metadata_map["eyescreen"])["model"]["name"] == (
        "tiny-cnn-binocular"
    )
