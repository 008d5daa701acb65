"""What the trainer trains on: one eye per sample, or a patient's two eyes per sample.

The training loop (train.py) is the same for both; a task says how samples are loaded, how a batch is
prepared, what the loss is, and which probabilities and labels validation scores.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import augment
from .data import Dataset
from .findings import Findings, WithFindings, class_targets, findings_loss
from .inference import autocast, prepare_batch
from .models import create_model
from .preprocess import ImageCache, load_stack


@dataclass
class Samples:
    inputs: torch.Tensor  # uint8 [N, 3, H, W] (eyes) or [P, 2, 3, H, W] (patients)
    targets: torch.Tensor  # [N] eye labels, or [P, 3]: right, left, patient (-1: none)
    labels: torch.Tensor  # one class per sample for balancing (-1: none)
    mask: torch.Tensor | None = None  # [P, 2]: which eyes are present
    skipped: tuple[str, ...] = ()
    names: tuple[str, ...] = ()  # image key per eye, or patient id per patient
    groups: tuple[str, ...] = ()  # patient of each sample (for bootstrap by patient)
    paths: tuple = ()  # image file per eye (single-eye tasks)
    eye_names: tuple[tuple[str, str], ...] = ()  # patients: image key of the right and left eye ("": absent)
    discs: torch.Tensor | None = None  # [N, 3] optic disc row, col, diameter per eye, for crops on the disc
    soft: torch.Tensor | None = None  # [N, C] a teacher's probabilities per eye (distill.py)

    def __len__(self) -> int:
        return len(self.inputs)


def _load(paths, cache: ImageCache, name: str, show: bool, report: bool):
    images, ok, errors = load_stack(paths, cache, progress=show, desc=name)
    messages = tuple(m for _, m in errors)
    for m in messages if report else ():
        print(f"skipped: {m}", file=sys.stderr)
    return images, ok, messages


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, tuple[float, torch.Tensor]]:
    """Blend each image with another of the batch (Zhang et al. 2018, mixup): one lam ~ Beta(alpha,
    alpha) per batch, a random partner per image. Returns the blend and (lam, perm) for `mixed`."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x)).to(x.device)
    return x.mul(lam).add_(x[perm], alpha=1 - lam), (lam, perm)


def mixed(criterion, targets: torch.Tensor, mix) -> torch.Tensor:
    """The loss against blended targets: lam * loss(targets) + (1 - lam) * loss(partners' targets)."""
    if mix is None:
        return criterion(targets)
    lam, perm = mix
    return lam * criterion(targets) + (1 - lam) * criterion(targets[perm])


class SingleEye:
    binocular = False

    def __init__(self, classes: list[str]):
        self.classes = classes

    def build(self, model_name: str) -> tuple[nn.Module, dict]:
        args = {"num_classes": len(self.classes)}
        return create_model(model_name, **args), {"name": model_name, "args": args}

    def load(self, ds: Dataset, cache: ImageCache, name: str, show: bool, report: bool) -> Samples:
        return self._eyes(ds.records, cache, name, show, report)

    def _eyes(
        self, records, cache: ImageCache, name: str, show: bool, report: bool, findings=None
    ) -> Samples:
        """One sample per readable eye; targets are the class (-1: none), then any findings."""
        images, ok, skipped = _load([r.path for r in records], cache, name, show, report)
        kept = [records[i] for i in ok]
        labels = torch.as_tensor(class_targets(kept, self.classes))
        targets = labels if findings is None else torch.cat([labels[:, None], findings.targets(kept)], 1)
        return Samples(images, targets, labels, skipped=skipped, names=tuple(r.key for r in kept),
                       groups=tuple(r.group for r in kept), paths=tuple(r.path for r in kept))  # fmt: skip

    def load_train(self, ds: Dataset, cache: ImageCache, show: bool, report: bool) -> Samples:
        return self.load(ds, cache, "train", show, report)

    def trainable(self, model: nn.Module) -> nn.Module:
        """What the optimiser trains: the model itself, or the model with training-only parts."""
        return model

    def batch(self, s: Samples, idx, transform, device, mean, std, channels_last):
        # Augment on the training device: batched, it is cheap on a CPU and free on a GPU.
        discs = s.discs[idx] if s.discs is not None else None
        x = augment.apply(transform, s.inputs[idx].to(device, non_blocking=True), discs)
        x = prepare_batch(x, device, mean, std, channels_last)
        return x, None, s.targets[idx].to(device)

    def loss(self, net, x, mask, y, loss_fn, log_prior, adjust: bool, mix=None, teacher=None):
        """`mix` = (lam, perm): x is lam * images + (1 - lam) * images[perm] (see `mixup`); `teacher`:
        the batch's distillation term (`distill.teacher_term`), never with mix."""
        logits = net(x).float()
        shifted = logits + log_prior if adjust else logits
        loss = mixed(lambda t: loss_fn(shifted, t), y, mix)
        if teacher is not None:
            loss = loss + teacher(logits, y >= 0)
        return loss, int((logits.argmax(1) == y).sum()), len(y)

    def probabilities(self, model, s: Samples, mean, std, device, precision, channels_last):
        from .inference import predict_proba

        return predict_proba(model, s.inputs, mean, std, device, precision, channels_last), s.targets.numpy()


class SingleEyeWithFindings(SingleEye):
    """One eye per sample, plus a findings head trained on every eye of the training patients.

    Targets are [N, 1 + F]: the class (-1 for an eye outside the selected classes), then the findings.
    """

    def __init__(self, classes: list[str], findings: Findings, weight: float):
        super().__init__(classes)
        self.findings, self.weight = findings, weight

    def load_train(self, ds: Dataset, cache: ImageCache, show: bool, report: bool) -> Samples:
        records = ds.records + self.findings.extra
        return self._eyes(records, cache, "train", show, report, self.findings)

    def trainable(self, model: nn.Module) -> nn.Module:
        return WithFindings(model, len(self.findings.vocabulary))

    def loss(self, net, x, mask, t, loss_fn, log_prior, adjust: bool, mix=None, teacher=None):
        logits, finding_logits = net(x)
        logits, y = logits.float(), t[:, 0]
        shifted = logits + log_prior if adjust else logits

        def criterion(t):
            loss = self.weight * findings_loss(finding_logits, t[:, 1:])
            has = t[:, 0] >= 0  # eyes outside the classes train the findings head only
            return loss + loss_fn(shifted[has], t[has, 0]) if has.any() else loss

        has = y >= 0
        loss = mixed(criterion, t, mix)
        if teacher is not None:
            loss = loss + teacher(logits, has)
        return loss, int((logits.argmax(1)[has] == y[has]).sum()), int(has.sum())


class BothEyes(SingleEye):
    """Samples are patients: right and left eye, a presence mask, eye labels and a patient label."""

    binocular = True

    def __init__(self, classes: list[str], normal_class: str = "normal", pooling: str = "attention",
                 two_diseases: str = "exclude", mirror_left: bool = True):  # fmt: skip
        super().__init__(classes)
        self.normal_class, self.pooling, self.two_diseases = normal_class, pooling, two_diseases
        self.mirror_left = mirror_left

    @classmethod
    def of_checkpoint(cls, meta: dict) -> BothEyes:
        """The patients of a both-eye checkpoint, labelled as in its training."""
        config = meta.get("config", {})
        return cls(meta["classes"], config.get("normal_class", "normal"),
                   two_diseases=config.get("two_diseases", "exclude"))  # fmt: skip

    def build(self, model_name: str) -> tuple[nn.Module, dict]:
        args = {"num_classes": len(self.classes), "pooling": self.pooling, "mirror_left": self.mirror_left}
        return create_model(model_name, **args), {"name": model_name, "args": args}

    def load(self, ds: Dataset, cache: ImageCache, name: str, show: bool, report: bool) -> Samples:
        return self._patients(ds.records, cache, name, show, report)

    def _patients(
        self, records, cache: ImageCache, name: str, show: bool, report: bool, findings=None
    ) -> Samples:
        """One sample per patient with a readable eye. Targets [P, 3]: right, left, patient class (-1:
        none; an eye outside the classes has none: its patient takes the other eye's disease, and is not
        called normal); with `findings`, then each eye's findings, right then left ([P, 3 + 2F]; -1 where
        an eye is absent)."""
        from .pairs import pair_records, patient_label

        index = {c: i for i, c in enumerate(self.classes)}
        pairs, apart = pair_records(records)
        for r in apart if report else ():
            print(
                f"not paired (no usable patient id / eye, or a second photo of one eye): {r.key}",
                file=sys.stderr,
            )
        slots = [(p, side) for p in pairs for side in ("right", "left") if getattr(p, side) is not None]
        images, ok, skipped = _load([getattr(p, side) for p, side in slots], cache, name, show, report)
        size = images.shape[-1]
        row = {p.patient: i for i, p in enumerate(pairs)}
        inputs = torch.zeros((len(pairs), 2, 3, size, size), dtype=torch.uint8)
        mask = torch.zeros((len(pairs), 2), dtype=torch.bool)
        n_findings = len(findings.vocabulary) if findings is not None else 0
        targets = torch.full((len(pairs), 3 + 2 * n_findings), -1, dtype=torch.long)
        # each eye's findings row, computed once for every record (a pair knows its eyes by path)
        eye_findings = (
            dict(zip((r.path for r in records), findings.targets(records), strict=True)) if n_findings else {}
        )
        for image, k in zip(images, ok, strict=True):
            pair, side = slots[k]
            i, j = row[pair.patient], 0 if side == "right" else 1
            inputs[i, j], mask[i, j] = image, True
            targets[i, j] = index.get(getattr(pair, f"{side}_label"), -1)
            if n_findings:
                start = 3 + j * n_findings
                targets[i, start : start + n_findings] = eye_findings[getattr(pair, side)]
        for pair in pairs:
            i = row[pair.patient]
            present = [
                getattr(pair, f"{s}_label") for s, m in zip(("right", "left"), mask[i], strict=True) if m
            ]
            classed = [c for c in present if c in index]
            label = patient_label(classed, self.classes, self.normal_class, self.two_diseases)
            if label == self.normal_class and len(classed) < len(present):
                label = None  # "normal" needs every eye normal: an eye outside the classes is not known to be
            targets[i, 2] = index[label] if label is not None else -1
        keep = mask.any(1)  # patients whose every photo was unreadable drop out
        kept = [p for p, k in zip(pairs, keep, strict=True) if k]
        ids = tuple(p.patient for p in kept)
        key = {r.path: r.key for r in records}
        eye_names = tuple(
            tuple(key[path] if path is not None else "" for path in (p.right, p.left)) for p in kept
        )
        return Samples(inputs[keep], targets[keep], targets[keep, 2], mask[keep], skipped, ids, ids,
                       eye_names=eye_names)  # fmt: skip

    def batch(self, s: Samples, idx, transform, device, mean, std, channels_last):
        eyes = s.inputs[idx].to(device, non_blocking=True)
        if transform is not None:
            eyes = augment.apply(transform, eyes.flatten(0, 1)).unflatten(0, eyes.shape[:2])
        x = prepare_batch(eyes, device, mean, std, channels_last=False)  # 5-D; the model handles the layout
        return x, s.mask[idx].to(device), s.targets[idx].to(device)

    def loss(self, net, x, mask, t, loss_fn, log_prior, adjust: bool, mix=None):
        """Per-eye loss on the labelled, present eyes plus the patient loss where the patient has a label.
        No mixup (`mix` must be None): a blend of two patients' eye pairs is not a patient."""
        eye_logits, patient_logits = net(x, mask)
        return self._class_loss(eye_logits, patient_logits, mask, t, loss_fn, log_prior, adjust)

    def _class_loss(self, eye_logits, patient_logits, mask, t, loss_fn, log_prior, adjust: bool):
        eye_logits, patient_logits = eye_logits.float(), patient_logits.float()
        eye_t = t[:, :2].masked_fill(~mask, -1)
        shift = log_prior if adjust else 0.0
        has_eye, has_patient = eye_t >= 0, t[:, 2] >= 0
        loss = eye_logits.sum() * 0.0  # keeps the graph when a batch has no labels of one kind
        if has_eye.any():
            loss = loss + loss_fn(eye_logits[has_eye] + shift, eye_t[has_eye])
        if has_patient.any():
            loss = loss + loss_fn(patient_logits[has_patient] + shift, t[has_patient, 2])
        correct = int((patient_logits.argmax(1)[has_patient] == t[has_patient, 2]).sum())
        return loss, correct, int(has_patient.sum())

    @torch.inference_mode()
    def predict_all(self, model, s: Samples, mean, std, device, precision, batch_size: int = 32):
        """Probabilities for every sample: eyes [P, 2, K] (meaningless where absent) and patients [P, K]."""
        was_training = model.training
        model.eval()
        eyes, patients = [], []
        try:
            for start in range(0, len(s), batch_size):
                x = prepare_batch(
                    s.inputs[start : start + batch_size], device, mean, std, channels_last=False
                )
                with autocast(device, precision):
                    eye_logits, logits = model(x, s.mask[start : start + batch_size].to(device))
                eyes.append(torch.softmax(eye_logits.float(), -1).cpu())
                patients.append(torch.softmax(logits.float(), -1).cpu())
        finally:
            model.train(was_training)
        k = len(self.classes)
        if not patients:
            return np.zeros((0, 2, k)), np.zeros((0, k))
        return torch.cat(eyes).numpy(), torch.cat(patients).numpy()

    def probabilities(self, model, s: Samples, mean, std, device, precision, channels_last):
        """Patient-level probabilities and labels for the patients that have one."""
        scored = self.both_levels(model, s, mean, std, device, precision)
        return scored["prob"], scored["y"]

    def both_levels(self, model, s: Samples, mean, std, device, precision) -> dict:
        """In one pass: the probabilities and labels of the patients that have a label ("prob", "y"), and of
        the present, labelled eyes ("eye_prob", "eye_y", with their image keys "eye_names")."""
        eyes, patients = self.predict_all(model, s, mean, std, device, precision)
        has_label = (s.targets[:, 2] >= 0).numpy()
        labels = s.targets[:, :2].numpy()
        eye_kept = s.mask.numpy() & (labels >= 0)
        names = np.array(s.eye_names, dtype=object).reshape(len(s), 2)
        return {"prob": patients[has_label], "y": s.targets[has_label, 2].numpy(),
                "eye_prob": eyes[eye_kept], "eye_y": labels[eye_kept], "eye_names": names[eye_kept]}  # fmt: skip


class BothEyesWithFindings(BothEyes):
    """Patients, as `BothEyes`, plus a findings head on each eye's pooled features, trained on every eye
    of the training patients (an eye outside the classes adds its findings loss only)."""

    def __init__(self, classes: list[str], findings: Findings, weight: float, **both_eyes):
        super().__init__(classes, **both_eyes)
        self.findings, self.weight = findings, weight

    def load_train(self, ds: Dataset, cache: ImageCache, show: bool, report: bool) -> Samples:
        return self._patients(ds.records + self.findings.extra, cache, "train", show, report, self.findings)

    def trainable(self, model: nn.Module) -> nn.Module:
        return WithFindings(model, len(self.findings.vocabulary))

    def loss(self, net, x, mask, t, loss_fn, log_prior, adjust: bool, mix=None):
        (eye_logits, patient_logits), finding_logits = net(x, mask)
        loss, correct, scored = self._class_loss(
            eye_logits, patient_logits, mask, t, loss_fn, log_prior, adjust
        )
        eye_findings = t[:, 3:].unflatten(1, (2, -1))  # [P, 2, F]
        return loss + self.weight * findings_loss(finding_logits[mask], eye_findings[mask]), correct, scored
