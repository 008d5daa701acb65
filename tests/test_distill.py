"""`train --teacher`: a trained model's probabilities as a second target beside the labels."""

import pytest
import torch

from eyescreen.checkpoint import load_model, read_meta, save_model
from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.data import load_dataset
from eyescreen.distill import soft_cross_entropy, teacher_probabilities, teacher_term
from eyescreen.inference import paths_predictor
from eyescreen.models import create_model
from eyescreen.preprocess import ImageCache, Preprocessing
from eyescreen.train import train

SMALL = dict(model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32")


@pytest.fixture(scope="module")
def teacher(synthetic_manifest, tmp_path_factory):
    return train(
        preset("quick", **SMALL), synthetic_manifest, tmp_path_factory.mktemp("t") / "t", progress=False
    )


def test_the_soft_target_loss_is_lowest_at_the_teachers_probabilities():
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    at_teacher = soft_cross_entropy(soft.log(), soft)
    assert torch.isclose(at_teacher, -(soft * soft.log()).sum(1).mean())  # the teacher's own entropy
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        assert soft_cross_entropy(torch.randn(2, 3, generator=gen) * 3, soft) > at_teacher


def test_the_teacher_term_counts_the_eyes_with_a_class_only():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=gen, requires_grad=True)
    soft = torch.softmax(torch.randn(4, 3, generator=gen), 1)
    has = torch.tensor([True, False, True, False])
    term = teacher_term(soft, 2.0)(logits, has)
    assert torch.isclose(term, 2.0 * soft_cross_entropy(logits[has], soft[has]))
    term.backward()
    assert logits.grad[~has].abs().sum() == 0 and logits.grad[has].abs().sum() > 0
    none = teacher_term(soft, 2.0)(logits, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0 and none.requires_grad  # a batch of findings-only eyes still backpropagates


def test_on_every_eye_the_teacher_term_counts_the_eyes_outside_the_classes_too():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, generator=gen, requires_grad=True)
    soft = torch.softmax(torch.randn(4, 3, generator=gen), 1)
    has = torch.tensor([True, False, True, False])
    term = teacher_term(soft, 2.0, every_eye=True)(logits, has)
    assert torch.isclose(term, 2.0 * soft_cross_entropy(logits, soft))
    term.backward()
    assert (logits.grad.abs().sum(1) > 0).all()
    assert teacher_term(soft, 2.0, every_eye=True)(logits, torch.zeros(4, dtype=torch.bool)) > 0


def test_distilling_on_every_eye_needs_a_teacher_and_the_findings_eyes():
    with pytest.raises(ValueError, match="without --findings there are none"):
        preset("quick", **SMALL, teacher="t", distill_all_eyes=True)
    with pytest.raises(ValueError, match="needs a --teacher"):
        preset("quick", **SMALL, findings="keywords", distill_all_eyes=True)


def test_the_teacher_sees_the_photographs_as_it_was_trained_to(teacher, synthetic_manifest):
    """A 40-px teacher of a 48-px student: its probabilities are those it gives at 40 px, in file order."""
    data = load_dataset(synthetic_manifest)
    paths = tuple(r.path for r in data.records[:7])
    soft, line = teacher_probabilities(str(teacher.parent), paths, data.classes, torch.device("cpu"), "fp32")
    model, meta = load_model(teacher)
    assert meta["preprocessing"]["image_size"] == 40
    predict = paths_predictor(model, ImageCache(Preprocessing(**meta["preprocessing"])), meta["normalization"],
                              torch.device("cpu"), "fp32")  # fmt: skip
    expected, ok = predict(list(paths))
    assert ok == list(range(7)) and torch.allclose(soft, torch.from_numpy(expected), atol=1e-6)
    assert str(teacher) in line and "epoch 1" in line


def test_distillation_pulls_the_student_towards_its_teacher(teacher, synthetic_manifest, tmp_path):
    """Weight 0 trains exactly as without a teacher; a large weight makes the student agree with its
    teacher on the training photographs far more than a student of the labels alone."""
    split = teacher.parent / "split.csv"
    args = dict(SMALL, epochs=3, image_size=48, seed=5)
    runs = {}
    for name, extra in {"labels": {}, "weight-0": {"distill_weight": 0.0, "teacher": str(teacher)},
                        "distilled": {"distill_weight": 20.0, "teacher": str(teacher)}}.items():  # fmt: skip
        runs[name] = train(preset("quick", **args, **extra), synthetic_manifest, tmp_path / name,
                           split_file=split, progress=False)  # fmt: skip
    weights = {name: load_model(path)[0].state_dict() for name, path in runs.items()}
    assert all(torch.equal(weights["labels"][k], weights["weight-0"][k]) for k in weights["labels"])
    assert any(not torch.equal(weights["labels"][k], weights["distilled"][k]) for k in weights["labels"])
    assert read_meta(runs["distilled"])["config"]["teacher"] == str(teacher)

    data = load_dataset(synthetic_manifest)
    paths = tuple(r.path for r in data.records)
    cpu = torch.device("cpu")
    target, _ = teacher_probabilities(str(teacher), paths, data.classes, cpu, "fp32")

    def disagreement(run):
        student, _ = teacher_probabilities(str(run), paths, data.classes, cpu, "fp32")
        return float((target * (target.log() - student.log())).sum(1).mean())  # KL(teacher || student)

    assert disagreement(runs["distilled"]) < 0.5 * disagreement(runs["labels"])


def test_teachers_that_cannot_teach_are_refused(teacher, synthetic_manifest, tmp_path, capsys):
    args = ["train", "--data", str(synthetic_manifest), "--preset", "quick", "--model", "tiny-cnn",
            "--image-size", "40", "--epochs", "1", "--precision", "fp32", "--no-progress"]  # fmt: skip
    split = ["--split", str(teacher.parent / "split.csv")]

    # it trained on photographs this run holds out: its probabilities would leak what they are
    assert main([*args, "--out", str(tmp_path / "a"), "--seed", "3", "--teacher", str(teacher)]) == 2
    assert f"distil on its own split: --split {teacher.parent / 'split.csv'}" in capsys.readouterr().err

    classes = ["--classes", ",".join(reversed(read_meta(teacher)["classes"]))]
    assert main([*args, "--out", str(tmp_path / "b"), *split, *classes, "--teacher", str(teacher)]) == 2
    assert "the teacher's classes" in capsys.readouterr().err

    assert (
        main([*args, "--out", str(tmp_path / "c"), *split, "--teacher", str(teacher), "--mixup", "0.2"]) == 2
    )
    assert "cannot be used with --mixup" in capsys.readouterr().err

    both = ["--model", "tiny-cnn-binocular"]
    assert main([*args, "--out", str(tmp_path / "d"), *split, *both, "--teacher", str(teacher)]) == 2
    assert "distils into a single-eye model" in capsys.readouterr().err

    classes = read_meta(teacher)["classes"]
    both_eyes = tmp_path / "both.safetensors"
    save_model(both_eyes, create_model("tiny-cnn-binocular", len(classes)),
               {"model": {"name": "tiny-cnn-binocular", "args": {"num_classes": len(classes)}}, "classes": classes})  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "e"), *split, "--teacher", str(both_eyes)]) == 2
    assert "a both-eye model cannot teach a single-eye one" in capsys.readouterr().err
    assert not (tmp_path / "e" / "best.safetensors").exists()


def test_an_ensemble_teaches_with_its_averaged_probabilities(teacher, synthetic_manifest, tmp_path):
    split = teacher.parent / "split.csv"
    other = train(preset("quick", **SMALL, seed=2), synthetic_manifest, tmp_path / "other", split_file=split,
                  progress=False)  # fmt: skip
    assert main(["ensemble", str(teacher), str(other), "--out", str(tmp_path / "ens"), "--no-calibrate"]) == 0
    data = load_dataset(synthetic_manifest)
    paths = tuple(r.path for r in data.records[:5])
    cpu = torch.device("cpu")
    soft, line = teacher_probabilities(str(tmp_path / "ens"), paths, data.classes, cpu, "fp32")
    members = [
        teacher_probabilities(str(run), paths, data.classes, cpu, "fp32")[0] for run in (teacher, other)
    ]
    expected = torch.softmax((members[0].log() + members[1].log()) / 2, 1)  # the mean of their logits
    assert torch.allclose(soft, expected, atol=1e-5) and line.endswith("(ensemble of 2 (tiny-cnn, tiny-cnn))")
    student = train(preset("quick", **SMALL, teacher=str(tmp_path / "ens")), synthetic_manifest,
                    tmp_path / "student", split_file=split, progress=False)  # fmt: skip
    assert read_meta(student)["config"]["teacher"] == str(tmp_path / "ens" / "best.safetensors")


def test_a_taught_run_resumes_to_the_weights_of_an_uninterrupted_one(
    teacher, synthetic_manifest, tmp_path, monkeypatch
):
    """On --resume the teacher's probabilities are computed again, from the checkpoint the run recorded."""
    from safetensors.torch import load_file

    import eyescreen.train as train_module
    from interrupt import interrupted_after_saves

    split = teacher.parent / "split.csv"
    cfg = preset("quick", **dict(SMALL, epochs=3), teacher=str(teacher.parent), distill_weight=2.0)
    train(cfg, synthetic_manifest, tmp_path / "full", split_file=split, progress=False)
    with interrupted_after_saves(monkeypatch, train_module, saves=2):
        train(cfg, synthetic_manifest, tmp_path / "cut", split_file=split, progress=False)
    train(None, synthetic_manifest, tmp_path / "cut", resume=True, progress=False)
    full, resumed = (load_file(tmp_path / run / "last.safetensors") for run in ("full", "cut"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
