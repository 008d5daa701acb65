"""CAMs through pytorch-grad-cam: they find a planted lesion and leave the model as they found it."""

import random

import numpy as np
import pytest
import torch

from eyescreen.explain import compute_cams, list_methods
from eyescreen.models import create_model
from synthetic import fundus

SIZE, MEAN, STD = 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def lesion_images(n: int, seed: int):
    """Half the images carry a pale lesion at a random place inside the fundus: class 1."""
    rng = random.Random(seed)
    images, labels, centres = [], [], []
    for i in range(n):
        has_lesion = i % 2 == 1
        centre = (rng.randint(20, 44), rng.randint(20, 44))
        im, _ = fundus(SIZE, "exudate" if has_lesion else None, seed=seed * 1000 + i, lesion_at=centre)
        images.append(np.asarray(im))
        labels.append(int(has_lesion))
        centres.append(centre)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), centres


@pytest.fixture(scope="module")
def lesion_model():
    torch.manual_seed(0)
    x, y, _ = lesion_images(160, seed=1)
    model = create_model("tiny-cnn", num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xf = (x.float() / 255 - 0.5) / 0.25
    for _ in range(60):
        for idx in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.cross_entropy(model(xf[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    assert (model(xf).argmax(1) == y).float().mean() > 0.95, "the tiny model did not learn the lesion"
    return model


def test_gradcam_peak_lies_inside_the_planted_lesion(lesion_model):
    x, y, centres = lesion_images(20, seed=2)
    lesion = y == 1
    cams = compute_cams(lesion_model, x[lesion], MEAN, STD, "gradcam", targets=[1] * int(lesion.sum()))
    r = SIZE // 8
    inside = 0
    for cam, (cx, cy) in zip(cams, [c for c, has in zip(centres, lesion, strict=True) if has], strict=True):
        py, px = np.unravel_index(cam.argmax(), cam.shape)
        inside += (px - cx) ** 2 + (py - cy) ** 2 <= (r + 2) ** 2
    assert inside >= 0.8 * len(cams), f"peak inside the lesion for only {inside}/{len(cams)} images"


@pytest.mark.parametrize("method", list_methods())
def test_maps_are_clean_and_the_model_is_left_as_it_was(lesion_model, method):
    x, _, _ = lesion_images(4, seed=3)
    lesion_model.train()
    lesion_model[0].weight.requires_grad_(False)
    try:
        cams = compute_cams(lesion_model, x, MEAN, STD, method)
        assert cams.shape == (4, SIZE, SIZE)
        assert not np.isnan(cams).any() and cams.min() >= 0 and cams.max() <= 1
        assert lesion_model.training, "model mode not restored"
        assert not lesion_model[0].weight.requires_grad and lesion_model[2].weight.requires_grad
        hooks = [m._forward_hooks for m in lesion_model.modules()] + [
            m._backward_hooks for m in lesion_model.modules()
        ]
        assert not any(hooks), "CAM hooks left on the model"
    finally:
        lesion_model[0].weight.requires_grad_(True)
        lesion_model.eval()


def test_explicit_target_class_changes_the_map(lesion_model):
    x, y, _ = lesion_images(6, seed=4)
    x = x[y == 1]
    for_lesion = compute_cams(lesion_model, x, MEAN, STD, "gradcam", targets=[1] * len(x))
    for_normal = compute_cams(lesion_model, x, MEAN, STD, "gradcam", targets=[0] * len(x))
    predicted = compute_cams(lesion_model, x, MEAN, STD, "gradcam")
    assert np.allclose(predicted, for_lesion)  # the model predicts the lesion class here
    assert not np.allclose(for_lesion, for_normal)


def test_gradcam_beats_a_random_map_on_deletion_and_insertion(lesion_model):
    from eyescreen.faithfulness import deletion_insertion, random_maps

    x, y, _ = lesion_images(12, seed=5)
    x = x[y == 1]
    targets = [1] * len(x)
    cams = compute_cams(lesion_model, x, MEAN, STD, "gradcam", targets=targets)
    deletion, insertion = deletion_insertion(lesion_model, x, MEAN, STD, cams, targets)
    rnd_deletion, rnd_insertion = deletion_insertion(
        lesion_model, x, MEAN, STD, random_maps(cams.shape), targets
    )
    assert deletion.mean() < rnd_deletion.mean()
    assert insertion.mean() > rnd_insertion.mean()


def test_randomising_the_weights_decorrelates_the_maps(lesion_model):
    from eyescreen.faithfulness import randomisation_check

    x, y, _ = lesion_images(8, seed=6)
    before = [p.detach().clone() for p in lesion_model.parameters()]
    rows = randomisation_check(
        lesion_model, x[y == 1], MEAN, STD, "gradcam", targets=[1] * int((y == 1).sum())
    )
    assert [r["randomised_down_to"] for r in rows] == ["6", "2", "0"]  # output layer first, then inwards
    assert rows[-1]["spearman"] < 0.5
    assert all(torch.equal(a, b) for a, b in zip(before, lesion_model.parameters(), strict=True))  # untouched
