"""The findings head: extra supervision from a manifest column, from training patients only."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from eyescreen.checkpoint import load_model, load_state
from eyescreen.config import preset
from eyescreen.data import DataError, load_dataset, subset
from eyescreen.findings import WithFindings, findings_loss, training_findings
from eyescreen.models import create_model
from eyescreen.preprocess import ImageCache, Preprocessing
from eyescreen.train import train
from synthetic import write_dataset


@pytest.fixture(scope="module")
def manifest_with_findings(tmp_path_factory):
    """The synthetic set plus a `findings` column and three eyes without a class: one of patient 0, one
    of a patient in no split, and patient 0's right eye exported again under patient 500."""
    root = tmp_path_factory.mktemp("findings")
    manifest = write_dataset(root, patients=30, unlabelled=1)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    shutil.copy(root / "images/0_left.jpg", root / "images/0_extra.jpg")
    rows.append({"image": "images/0_extra.jpg", "patient_id": "0", "eye": "left", "label": ""})
    Image.open(root / "images/0_right.jpg").save(root / "images/500_right.png")  # patient 0's eye, another id
    rows.append({"image": "images/500_right.png", "patient_id": "500", "eye": "right", "label": ""})
    for r in rows:
        r["findings"] = {"normal": "", "": "cataract; lens dust"}.get(r["label"], "lesion;  Lesion ; disc")
        # unknown for the unclassed eyes, written as tables do
        r["age"] = (
            str(30 + 2 * int(r["patient_id"])) if r["label"] else ("" if r["patient_id"] == "0" else "NaN")
        )
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def split_with_patient_0_in(ds, part):
    return {r.key: part if r.group == "patient:0" else "train" for r in ds.records}


def test_extra_eyes_and_vocabulary_come_from_training_patients_only(manifest_with_findings):
    ds = load_dataset(manifest_with_findings)
    held_out = training_findings(ds, split_with_patient_0_in(ds, "test"), "findings", min_count=1)
    # patient 0 is a test patient: its eye without a class stays out, and so does the copy of its right eye
    # under patient 500; the unassigned patient joins
    assert [r.key for r in held_out.extra] == ["images/u0.jpg"]
    assert held_out.summary().endswith("1 more training eyes without a selected class (1 left out: held-out "
                                       "eyes under other ids, copied or photographed again)")  # fmt: skip
    assert held_out.vocabulary == [
        "disc",
        "lesion",
        "cataract",
        "lens dust",
    ]  # by count, then name; case-folded
    in_train = training_findings(ds, split_with_patient_0_in(ds, "train"), "findings", min_count=1)
    assert sorted(r.key for r in in_train.extra) == [
        "images/0_extra.jpg",
        "images/500_right.png",
        "images/u0.jpg",
    ]
    assert in_train.linked_left_out == 0
    targets = in_train.targets(in_train.extra)
    assert targets.tolist() == [[0, 0, 1, 1]] * 3
    frequent = training_findings(ds, split_with_patient_0_in(ds, "train"), "findings", min_count=20)
    assert frequent.vocabulary == ["disc", "lesion"]  # the unlabelled eyes' findings are too rare


def test_findings_errors_name_the_file_and_the_problem(manifest_with_findings, tmp_path):
    ds = load_dataset(manifest_with_findings)
    split = split_with_patient_0_in(ds, "train")
    with pytest.raises(DataError, match=r"manifest\.csv.*no column 'keywords'"):
        training_findings(ds, split, "keywords")
    with pytest.raises(DataError, match="occurs 1000 times"):
        training_findings(ds, split, "findings", min_count=1000)


def test_the_findings_head_sees_the_pooled_features_and_leaves_the_model_unchanged():
    model = create_model("tiny-cnn", num_classes=3)
    wrapped = WithFindings(model, n_findings=5)
    x = torch.rand(4, 3, 24, 24)
    logits, findings = wrapped(x)
    assert logits.shape == (4, 3) and findings.shape == (4, 5)
    features = model[:-1](x)  # everything before the classifier layer
    torch.testing.assert_close(findings, wrapped.findings(features))
    assert set(model.state_dict()) == set(create_model("tiny-cnn", num_classes=3).state_dict())
    assert not model[-1]._forward_pre_hooks  # nothing left behind on the classifier


def test_training_with_findings_saves_a_plain_classifier_and_resumes(manifest_with_findings, tmp_path):
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=2, batch_size=8, precision="fp32",
                 findings="findings", findings_weight=1.0)  # fmt: skip
    out = tmp_path / "run"
    train(cfg, manifest_with_findings, out, progress=False)
    state = load_state(out / "resume.pt")["model"]
    assert {"findings.weight", "findings.bias"} <= set(state)  # the head trained and is resumable
    model, meta = load_model(out / "best.safetensors", "cpu")
    assert set(model.state_dict()) == set(create_model("tiny-cnn", num_classes=3).state_dict())
    assert meta["config"]["findings"] == "findings"
    train(None, manifest_with_findings, out, resume=True, progress=False)  # loads the head's state


def test_mixup_with_findings_blends_eyes_with_and_without_a_class(manifest_with_findings, tmp_path):
    """Eyes outside the classes train the findings head only; mixed with a classed eye, the blend still
    trains the class head on the classed partner's share."""
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32",
                 findings="findings", mixup=0.4)  # fmt: skip
    train(cfg, manifest_with_findings, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_a_both_eye_patient_carries_each_eyes_findings(manifest_with_findings):
    """Patients of the training split hold their eyes' findings, right then left; an eye outside the
    classes joins with its findings and no class, and leaves the patient's label to the other eye."""
    from eyescreen.tasks import BothEyesWithFindings

    ds = load_dataset(manifest_with_findings)
    split = split_with_patient_0_in(ds, "train")
    findings = training_findings(ds, split, "findings", min_count=1)
    assert findings.vocabulary == ["disc", "lesion", "cataract", "lens dust"]
    task = BothEyesWithFindings(ds.classes, findings, 0.5)
    samples = task.load_train(subset(ds, split, "train"), ImageCache(Preprocessing(40)), False, False)
    by_patient = dict(zip(samples.names, samples.targets.tolist(), strict=True))
    classes = {c: i for i, c in enumerate(ds.classes)}
    # right, left, patient class; then right's findings, left's findings
    assert by_patient["0"] == [classes["normal"]] * 3 + [0, 0, 0, 0] * 2  # its extra left photo: unpaired
    assert by_patient["1"] == [classes["spots"]] * 3 + [1, 1, 0, 0] * 2
    assert by_patient["1000"] == [-1, -1, -1] + [-1] * 4 + [0, 0, 1, 1]  # one eye, no class: findings only
    assert samples.mask[samples.names.index("1000")].tolist() == [False, True]


def test_a_patient_with_an_eye_outside_the_classes_takes_the_other_eyes_disease_but_is_not_called_normal(
    manifest_with_findings,
):
    from eyescreen.tasks import BothEyesWithFindings

    with open(manifest_with_findings, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # patient 0 (normal) and patient 1 (spots): the right eye outside the classes
        if r["image"] in ("images/0_right.jpg", "images/1_right.jpg"):
            r["label"] = ""
    manifest = manifest_with_findings.with_name("one_eye_unclassed.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = load_dataset(manifest)
    split = split_with_patient_0_in(ds, "train")
    findings = training_findings(ds, split, "findings", min_count=1)
    task = BothEyesWithFindings(ds.classes, findings, 0.5)
    samples = task.load_train(subset(ds, split, "train"), ImageCache(Preprocessing(40)), False, False)
    by_patient = dict(zip(samples.names, samples.targets[:, :3].tolist(), strict=True))
    assert by_patient["0"] == [-1, ds.classes.index("normal"), -1]
    assert by_patient["1"] == [-1, ds.classes.index("spots"), ds.classes.index("spots")]


def test_the_both_eye_findings_loss_counts_present_eyes_only():
    from eyescreen.tasks import BothEyesWithFindings

    torch.manual_seed(0)
    eye_logits, patient_logits = torch.randn(2, 2, 3), torch.randn(2, 3)
    mask = torch.tensor([[True, True], [False, True]])  # patient 1 has no right eye
    t = torch.tensor([[0, 0, 0, 1, 0, 0, 1], [-1, 2, 2, -1, -1, 1, 1]])  # classes, then F=2 per eye
    task = BothEyesWithFindings(["a", "b", "c"], findings=None, weight=0.5)
    ce = torch.nn.CrossEntropyLoss()

    def loss(finding_logits):
        net = lambda x, m: ((eye_logits, patient_logits), finding_logits)  # noqa: E731 - fixed outputs
        return task.loss(net, None, mask, t, ce, torch.zeros(3), False)[0]

    finding_logits = torch.randn(2, 2, 2)
    absent_changed = finding_logits.clone()
    absent_changed[1, 0] = 100.0  # the absent right eye's findings: no loss whatever they are
    torch.testing.assert_close(loss(absent_changed), loss(finding_logits))
    present = finding_logits[mask]
    expected = task._class_loss(eye_logits, patient_logits, mask, t, ce, torch.zeros(3), False)[0]
    expected = expected + 0.5 * findings_loss(present, torch.tensor([[1, 0], [0, 1], [1, 1]]))
    torch.testing.assert_close(loss(finding_logits), expected)


def test_training_a_both_eye_model_with_findings_saves_a_plain_both_eye_model(
    manifest_with_findings, tmp_path
):
    cfg = preset("quick", model="tiny-cnn-binocular", image_size=40, epochs=2, batch_size=8, precision="fp32",
                 findings="findings")  # fmt: skip
    out = tmp_path / "both"
    train(cfg, manifest_with_findings, out, progress=False)
    state = load_state(out / "resume.pt")["model"]
    assert {"findings.weight", "findings.bias"} <= set(state)
    model, meta = load_model(out / "best.safetensors", "cpu")
    plain = create_model("tiny-cnn-binocular", num_classes=3)
    assert set(model.state_dict()) == set(plain.state_dict())
    assert meta["config"]["findings"] == "findings"
    train(None, manifest_with_findings, out, resume=True, progress=False)  # loads the head's state


def test_the_mixed_findings_loss_is_the_blend_of_the_two_targets_losses():
    from eyescreen.tasks import SingleEyeWithFindings

    torch.manual_seed(0)
    logits, finding_logits = torch.randn(4, 3), torch.randn(4, 2)
    net = lambda x: (logits, finding_logits)  # noqa: E731 - fixed outputs: only the targets change
    t = torch.tensor([[0, 1, 0], [-1, 0, 1], [2, 1, 1], [1, 0, 0]])  # class (-1: none), findings
    perm = torch.tensor([1, 0, 3, 2])
    task = SingleEyeWithFindings(["a", "b", "c"], findings=None, weight=0.5)
    ce = torch.nn.CrossEntropyLoss()

    def loss(targets, mix=None):
        return task.loss(net, None, None, targets, ce, torch.zeros(3), False, mix)[0]

    torch.testing.assert_close(loss(t, (1.0, perm)), loss(t))
    torch.testing.assert_close(loss(t, (0.0, perm)), loss(t[perm]))
    torch.testing.assert_close(loss(t, (0.3, perm)), 0.3 * loss(t) + 0.7 * loss(t[perm]))
    unclassed = t.clone()
    unclassed[:, 0] = -1  # no class at all: the findings loss alone, no NaN from an empty class loss
    assert torch.isfinite(loss(unclassed, (0.5, perm)))


def test_crops_on_the_disc_cover_the_eyes_without_a_class_too(manifest_with_findings, tmp_path, monkeypatch):
    """The findings task trains on eyes outside the classes as well; each needs its disc position."""
    from eyescreen import augment

    sizes = []
    real = augment.apply

    def recording(transform, batch, discs=None):
        sizes.append((len(batch), None if discs is None else len(discs)))
        return real(transform, batch, discs)

    monkeypatch.setattr("eyescreen.tasks.augment.apply", recording)
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32",
                 findings="findings", crop_size=32, crop_on_disc=0.5)  # fmt: skip
    train(cfg, manifest_with_findings, tmp_path / "run", progress=False)
    assert sizes and all(n == d for n, d in sizes)  # every training batch came with its eyes' discs


def age_thresholds(findings):
    return [float(f.split(" > ")[1]) for f in findings.vocabulary if f.startswith("age > ")]


def test_a_numeric_column_is_learnt_as_thresholds_at_the_training_eyes_deciles(manifest_with_findings):
    ds = load_dataset(manifest_with_findings)
    held_out = training_findings(ds, split_with_patient_0_in(ds, "test"), "findings,age", min_count=1)
    assert {"disc", "lesion", "cataract", "lens dust"} <= set(held_out.vocabulary)  # the text column too
    thresholds = age_thresholds(held_out)
    assert len(thresholds) == 9 and sorted(thresholds) == thresholds
    assert 32 < thresholds[0] and thresholds[-1] < 88  # inside the training eyes' ages (32-88)
    ages = {r.key: 30 + 2 * int(r.group.split(":")[1]) for r in ds.records}
    targets = held_out.targets(ds.records)
    columns = [held_out.vocabulary.index(f"age > {t:g}") for t in thresholds]
    for r, row in zip(ds.records, targets, strict=True):  # ordinal: above every threshold under its age
        assert row[columns].tolist() == [int(ages[r.key] > t) for t in thresholds]
    (unclassed,) = held_out.extra  # its age is empty: unknown, no loss; its findings are known
    row = held_out.targets([unclassed])[0]  # "NaN" in the table
    assert row[columns].tolist() == [-1] * 9
    assert row[held_out.vocabulary.index("cataract")] == 1 and row[held_out.vocabulary.index("disc")] == 0
    # the thresholds come from training patients only: patient 0 (the youngest, 30) moves them when it trains
    in_train = training_findings(ds, split_with_patient_0_in(ds, "train"), "findings,age", min_count=1)
    ages_there = [i for i, f in enumerate(in_train.vocabulary) if f.startswith("age > ")]
    assert len(ages_there) == 9 and len(in_train.extra) == 3  # "" and "NaN" alike: unknown
    assert (in_train.targets(in_train.extra)[:, ages_there] == -1).all()
    assert age_thresholds(in_train)[0] < thresholds[0]
    with pytest.raises(
        DataError, match=r"no column 'height' for --findings \(.*--findings '' trains without"
    ):
        training_findings(ds, split_with_patient_0_in(ds, "train"), "findings, height")


def test_unknown_findings_add_nothing_to_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 4)
    targets = torch.tensor([[1, 0, -1, 1], [-1, -1, -1, -1], [0, 1, 1, -1]])
    known = targets >= 0
    by_hand = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[known], targets[known].float(), reduction="sum"
    ) / len(targets)
    torch.testing.assert_close(findings_loss(logits, targets), by_hand)
    moved = torch.where(known, logits, logits + 100.0)  # whatever it says where the truth is unknown
    torch.testing.assert_close(findings_loss(moved, targets), by_hand)
    assert np.isfinite(findings_loss(logits, torch.full((3, 4), -1)).item())


def test_training_with_a_numeric_findings_column(manifest_with_findings, tmp_path, capsys):
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32",
                 findings="findings,age")  # fmt: skip
    train(cfg, manifest_with_findings, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert "age > " in capsys.readouterr().out  # the head's findings are listed as training starts


def test_a_teacher_can_teach_the_eyes_outside_the_classes_too(manifest_with_findings, tmp_path, capsys):
    """With --distill-all-eyes the eyes --findings brings in (no class) train towards the teacher's
    probabilities as well: the only difference from the same run without it, so its weights differ."""
    from safetensors.torch import load_file

    small = dict(model="tiny-cnn", image_size=40, batch_size=8, precision="fp32", seed=3)
    teacher = train(
        preset("quick", **small, epochs=1), manifest_with_findings, tmp_path / "teacher", progress=False
    )
    split = teacher.parent / "split.csv"
    extra = training_findings(load_dataset(manifest_with_findings), _split(split), "findings").extra
    assert extra  # some to teach
    capsys.readouterr()
    runs = {}
    for every in (False, True):
        cfg = preset("quick", **small, epochs=2, findings="findings", teacher=str(teacher), distill_weight=5.0,
                     distill_all_eyes=every)  # fmt: skip
        runs[every] = train(cfg, manifest_with_findings, tmp_path / f"every-{every}", split_file=split,
                            progress=False)  # fmt: skip
        said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("distilling from")]
        assert said and said[0].endswith(f"; on the {len(extra)} eyes outside the classes too") == every
    alone, every = (load_file(runs[k].parent / "last.safetensors") for k in (False, True))
    assert any(not torch.equal(alone[k], every[k]) for k in alone)
    assert load_model(runs[True])[1]["config"]["distill_all_eyes"] is True


def _split(path):
    with open(path, newline="") as f:
        return {row["image"]: row["split"] for row in csv.DictReader(f)}
