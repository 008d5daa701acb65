import json

import numpy as np
import onnxruntime as ort
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


def test_a_both_eye_checkpoint_is_refused_with_a_clear_error(tmp_path, capsys):
    model = create_model("tiny-cnn-binocular", num_classes=2)
    meta = {
        "model": {"name": "tiny-cnn-binocular", "args": {"num_classes": 2}},
        "classes": ["a", "b"],
        "preprocessing": {"image_size": 32, "version": 1},
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
    }
    save_model(tmp_path / "both.safetensors", model, meta)
    assert main(["export", "--checkpoint", str(tmp_path / "both.safetensors")]) == 2
    assert "both-eye model (tiny-cnn-binocular) cannot be exported" in capsys.readouterr().err
    assert not (tmp_path / "both.onnx").exists()
