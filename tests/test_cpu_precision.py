"""`--precision auto` on a CPU: bf16 only where it has native bf16 and measured faster than fp32 there."""

import json

import torch

from eyescreen import cpu_precision as cp
from eyescreen import inference


def measured(monkeypatch, seconds: dict) -> list:
    """Pretend the CPU has bf16 and the probe measures `seconds`; returns the list of probe calls."""
    calls = []
    monkeypatch.setattr(cp, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(cp, "probe", lambda: calls.append(1) or dict(seconds))
    return calls


def test_bf16_is_chosen_only_where_it_measured_faster(monkeypatch):
    measured(monkeypatch, {"fp32": 1.0, "bf16": 0.4})
    assert cp.cpu_choice() == {
        "precision": "bf16",
        "speedup": 2.5,
        "seconds_per_step": {"fp32": 1.0, "bf16": 0.4},
    }
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)  # another thread count: measured apart
    measured(monkeypatch, {"fp32": 1.0, "bf16": 1.45})  # bf16 instructions, yet slower (seen on a Xeon VM)
    assert cp.cpu_choice()["precision"] == "fp32"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 9)
    measured(monkeypatch, {"fp32": 1.0, "bf16": 0.95})  # about the same: exact fp32 is kept
    assert cp.cpu_choice()["precision"] == "fp32"
    assert "bf16 measured at 1.05x fp32's speed" in cp.cpu_note()


def test_the_answer_is_remembered_per_machine_and_a_damaged_record_measured_again(tmp_path, monkeypatch):
    calls = measured(monkeypatch, {"fp32": 1.0, "bf16": 0.5})
    assert cp.cpu_choice()["precision"] == "bf16" and cp.cpu_choice()["precision"] == "bf16"
    assert len(calls) == 1
    store = tmp_path / "cache" / cp.STORE  # conftest points the cache folder here
    (key,) = json.loads(store.read_text())
    assert cp.cpu_name() in key and torch.__version__ in key
    store.write_text("{not json")
    assert cp.cpu_choice()["precision"] == "bf16" and len(calls) == 2


def test_a_cpu_without_bf16_is_not_measured(monkeypatch):
    monkeypatch.setattr(cp, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(cp, "probe", lambda: (_ for _ in ()).throw(AssertionError("probed")))
    assert cp.cpu_choice() == {"precision": "fp32", "speedup": None}
    assert "this CPU has no native bf16" in cp.cpu_note()


def test_the_probe_times_a_training_step_in_both_precisions():
    seconds = cp.probe(steps=1, size=32, batch=2)
    assert set(seconds) == {"fp32", "bf16"} and all(s > 0 for s in seconds.values())


def test_the_probe_leaves_the_callers_random_state_and_grad_mode_alone():
    """`auto` is first resolved where the caller is: after a run has seeded its initial weights, or inside
    inference (explain --evaluate's curves), where a training step could not run."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch.inference_mode():
        assert set(cp.probe(steps=1, size=32, batch=2)) == {"fp32", "bf16"}
        assert torch.is_inference_mode_enabled()
    with torch.no_grad():
        cp.probe(steps=1, size=32, batch=2)
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.rand(3), expected)


def test_auto_resolves_through_the_measurement_and_an_explicit_choice_is_kept(monkeypatch):
    monkeypatch.setattr(inference, "cpu_precision", lambda: "bf16")
    assert inference.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(inference, "cpu_precision", lambda: "fp32")
    assert inference.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert inference.resolve_precision("bf16", torch.device("cpu")) == "bf16"
