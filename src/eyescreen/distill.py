"""Knowledge distillation: train on a trained model's probabilities as well as on the labels.

A network trained towards the labels and towards the probabilities of a trained model of the same data
(its teacher) learns which classes look alike on each photograph, not only which one is right: students
of the same architecture often beat their teacher (Furlanello et al. 2018, born-again networks), and the
probabilities of an ensemble (`eyescreen ensemble`) carry much of its gain into one network (Hinton et al.
2015). The teacher's probabilities (temperature 1) are computed once, on the training photographs as the
teacher's own preprocessing prepares them, without augmentation; the student sees them under its own
augmentations (flips, rotations, colour: the class does not change, the teacher's view hardly does).
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import CheckpointError, checkpoint_in, load_model
from .ensemble import MODEL_NAME as ENSEMBLE
from .ensemble import model_name
from .inference import predict_proba
from .models import takes_both_eyes
from .preprocess import ImageCache, Preprocessing, load_stack


def teacher_probabilities(
    path: str, paths: tuple, classes: list[str], device, precision: str, cache_dir=None, show: bool = True
) -> tuple[torch.Tensor, str]:
    """The teacher's probabilities [N, C] for the photographs `paths`, and a line saying what they are.

    `path` is a checkpoint or a run folder; the teacher must have been trained on `classes`, in order."""
    checkpoint = checkpoint_in(path)
    with torch.random.fork_rng(devices=[]):  # building the teacher draws initial weights: the student's
        model, meta = load_model(checkpoint, device)  # own, and its batches, must not depend on it
    if list(meta["classes"]) != list(classes):
        raise CheckpointError(f"{checkpoint}: the teacher's classes ({', '.join(meta['classes'])}) are not this "
                              f"run's ({', '.join(classes)}), in that order")  # fmt: skip
    if takes_both_eyes(meta["model"]):
        raise CheckpointError(f"{checkpoint}: a both-eye model cannot teach a single-eye one")
    cache = ImageCache(Preprocessing(**meta["preprocessing"]), cache_dir)
    images, ok, errors = load_stack(list(paths), cache, progress=show, desc="teacher's view")
    if errors:  # the student read these files a moment ago: a teacher without them would misalign
        index, message = errors[0]
        raise ValueError(f"{paths[index]}: the teacher's preprocessing could not read it ({message})")
    norm = meta["normalization"]
    prob = predict_proba(model, images, norm["mean"], norm["std"], device, precision)
    soft = torch.from_numpy(prob).float()
    what = model_name(meta["model"])  # an ensemble: its members' networks, which have no one epoch
    if meta["model"]["name"] != ENSEMBLE:
        what += f", epoch {meta.get('epoch', '?')}"
    return soft, f"distilling from {checkpoint} ({what})"


def soft_cross_entropy(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Cross-entropy towards a probability vector per row: the KL divergence to it plus a constant."""
    return nn.functional.cross_entropy(logits, soft)


def teacher_term(soft: torch.Tensor, weight: float, every_eye: bool = False):
    """The loss a batch adds for its teacher: `weight` times the cross-entropy of the logits towards the
    teacher's probabilities (`soft`, the batch's rows), over the eyes that have a class (`has`), or over
    every eye of the batch (`every_eye`: the eyes outside the classes too, which the findings head brings)."""

    def term(logits: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        rows = torch.ones_like(has) if every_eye else has
        if not rows.any():
            return logits.sum() * 0.0
        return weight * soft_cross_entropy(logits[rows], soft[rows])

    return term
