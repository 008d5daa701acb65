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
    torch.manual_seed(11)
    expected = torch.rand(2)
    torch.manual_seed(11)
    rows = randomisation_check(
        lesion_model, x[y == 1], MEAN, STD, "gradcam", targets=[1] * int((y == 1).sum())
    )
    assert torch.equal(torch.rand(2), expected)  # the caller's random state is left alone
    assert [r["randomised_down_to"] for r in rows] == ["6", "2", "0"]  # output layer first, then inwards
    assert rows[-1]["spearman"] < 0.5
    again = randomisation_check(
        lesion_model, x[y == 1], MEAN, STD, "gradcam", targets=[1] * int((y == 1).sum())
    )
    assert again == rows  # the same random weights on every run
    assert all(torch.equal(a, b) for a, b in zip(before, lesion_model.parameters(), strict=True))  # untouched


def test_both_eye_model_gets_one_map_per_eye_for_the_patient_decision():
    from eyescreen.explain import compute_pair_cams
    from eyescreen.fusion import Binocular

    torch.manual_seed(0)
    model = Binocular("tiny-cnn", num_classes=2, pooling="attention").eval()
    x, _, _ = lesion_images(4, seed=7)
    pairs = x.view(2, 2, 3, SIZE, SIZE)
    mask = torch.tensor([[True, True], [True, False]])
    for method in ("gradcam", "eigencam", "layercam"):
        cams = compute_pair_cams(model, pairs, mask, MEAN, STD, method, targets=[1, 1])
        assert cams.shape == (2, 2, SIZE, SIZE)
        assert not np.isnan(cams).any() and cams.min() >= 0 and cams.max() <= 1
        assert cams[1, 1].max() == 0  # the absent eye has no map
        assert cams[0, 0].max() > 0 and cams[0, 1].max() > 0
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="scorecam"):
        compute_pair_cams(model, pairs, mask, MEAN, STD, "scorecam")


def lesion_pairs(n: int, seed: int):
    """Patients whose lesion, if any, is in one eye (right or left) at a random place: class 1."""
    rng = random.Random(seed)
    xs, ys, centres = [], [], []
    for i in range(n):
        lesion_eye = rng.choice([None, 0, 1])
        centre = (rng.randint(20, 44), rng.randint(20, 44))
        eyes = [np.asarray(fundus(SIZE, "exudate" if lesion_eye == j else None, seed=seed * 1000 + 2 * i + j,
                                  lesion_at=centre)[0]) for j in range(2)]  # fmt: skip
        xs.append(np.stack(eyes))
        ys.append(int(lesion_eye is not None))
        centres.append((lesion_eye, centre))
    x = torch.from_numpy(np.stack(xs)).permute(0, 1, 4, 2, 3).contiguous()
    return x, torch.tensor(ys), centres


@pytest.fixture(scope="module")
def pair_lesion_model():
    from eyescreen.fusion import Binocular

    torch.manual_seed(0)
    x, y, _ = lesion_pairs(96, 1)
    model = Binocular("tiny-cnn", num_classes=2, pooling="max")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xf = (x.float() / 255 - 0.5) / 0.25
    for _ in range(40):
        for idx in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.cross_entropy(model(xf[idx])[1], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_both_eye_map_finds_a_lesion_in_the_left_eye_after_mirroring_back(pair_lesion_model):
    from eyescreen.explain import compute_pair_cams
    from eyescreen.fusion import LEFT

    tx, ty, centres = lesion_pairs(24, 2)
    left = [i for i, (eye, _) in enumerate(centres) if eye == LEFT]
    cams = compute_pair_cams(pair_lesion_model, tx[left], torch.ones(len(left), 2, dtype=torch.bool), MEAN, STD,
                             "gradcam", targets=[1] * len(left))  # fmt: skip
    inside = 0
    for cam, i in zip(cams[:, LEFT], left, strict=True):
        cx, cy = centres[i][1]
        py, px = np.unravel_index(cam.argmax(), cam.shape)
        inside += (px - cx) ** 2 + (py - cy) ** 2 <= (SIZE // 8 + 2) ** 2
    assert inside >= 0.75 * len(left), f"left-eye peak on the lesion for {inside}/{len(left)}"


def test_both_eye_gradcam_beats_a_random_map_on_the_patient_decision(pair_lesion_model):
    from eyescreen.faithfulness import deletion_insertion, explanation_maps, random_maps

    x, y, _ = lesion_pairs(30, 5)
    x = x[y == 1]
    mask = torch.ones(len(x), 2, dtype=torch.bool)
    targets = np.ones(len(x), dtype=int)
    cams = explanation_maps(pair_lesion_model, x, MEAN, STD, "gradcam", targets, mask)
    assert cams.shape == (len(x), 2, SIZE, SIZE)
    deletion, insertion = deletion_insertion(pair_lesion_model, x, MEAN, STD, cams, targets, mask=mask)
    rnd = deletion_insertion(pair_lesion_model, x, MEAN, STD, random_maps(cams.shape), targets, mask=mask)
    assert deletion.shape == insertion.shape == (len(x),)  # one curve per patient
    assert deletion.mean() < rnd[0].mean()
    assert insertion.mean() > rnd[1].mean()


def test_an_absent_eye_never_moves_the_patient_curves(pair_lesion_model):
    from eyescreen.faithfulness import deletion_insertion, random_maps

    x, _, _ = lesion_pairs(4, 8)
    mask = torch.tensor([[True, False]] * 4)
    maps, targets = random_maps((4, 2, SIZE, SIZE), seed=1), np.ones(4, dtype=int)
    noisy = x.clone()
    noisy[:, 1] = torch.randint(0, 256, noisy[:, 1].shape, dtype=torch.uint8)  # only the absent eye differs
    first = deletion_insertion(pair_lesion_model, x, MEAN, STD, maps, targets, mask=mask)
    second = deletion_insertion(pair_lesion_model, noisy, MEAN, STD, maps, targets, mask=mask)
    assert np.allclose(first, second)
    both = deletion_insertion(
        pair_lesion_model, noisy, MEAN, STD, maps, targets, mask=torch.ones(4, 2, dtype=bool)
    )
    assert not np.allclose(first, both)  # present, the noise would count


def test_randomising_a_both_eye_model_follows_its_patient_path(pair_lesion_model):
    from eyescreen.faithfulness import randomisation_check

    x, y, _ = lesion_pairs(12, 6)
    x = x[y == 1]
    before = [p.detach().clone() for p in pair_lesion_model.parameters()]
    rows = randomisation_check(
        pair_lesion_model, x, MEAN, STD, "gradcam", mask=torch.ones(len(x), 2, dtype=bool)
    )
    names = [r["randomised_down_to"] for r in rows]
    # the patient head first, then the shared backbone from its last block; the per-eye head is off the path
    assert names[0] == "head_patient" and all(n.startswith("backbone.") for n in names[1:])
    assert "head_eye" not in names and len(names) >= 3
    assert rows[-1]["spearman"] < 0.5
    assert all(torch.equal(a, b) for a, b in zip(before, pair_lesion_model.parameters(), strict=True))


@pytest.mark.parametrize("eyes", [1, 2])
def test_overlay_draws_each_fundus_and_its_map_the_same_size(eyes):
    """A reader compares places between the photograph and its map: the colour bar must not shrink the map."""
    import matplotlib.pyplot as plt

    from eyescreen.explain import overlay_figure

    image = np.asarray(fundus(SIZE, None, seed=3)[0])
    cam = np.random.default_rng(0).random((SIZE, SIZE))
    fig = overlay_figure([image] * eyes, [cam] * eyes, "title", names=("right eye", "left eye")[:eyes])
    fig.canvas.draw()
    boxes = [ax.get_window_extent() for ax in fig.axes]
    for k in range(eyes):
        photo, overlay = boxes[3 * k], boxes[3 * k + 1]
        assert overlay.width == pytest.approx(photo.width, rel=0.01)
        assert overlay.height == pytest.approx(photo.height, rel=0.01)
    plt.close(fig)


def test_the_gallery_links_files_whose_names_hold_url_characters(tmp_path):
    """A file named "O'Brien #1 ?.jpg" must show: '#' and '?' would cut the link short, a quote break it."""
    from urllib.parse import unquote

    from eyescreen.explain import gallery

    overlay = "overlays/O'Brien #1 ?right.png"
    rows = [{"name": "O'Brien #1 ?right.jpg", "predicted": "normal", "probability": 0.9, "overlay": overlay}]
    gallery(rows, ["normal", "dr"], tmp_path / "index.html", "gradcam")
    page = (tmp_path / "index.html").read_text()
    links = [part.split("'")[0] for part in page.split("src='")[1:]]
    assert len(links) == 1 and "#" not in links[0] and "?" not in links[0] and unquote(links[0]) == overlay


def test_the_overlay_title_says_when_the_decision_rule_names_a_less_probable_class():
    from eyescreen.explain import decision_text

    classes = ["normal", "dr", "amd"]
    assert decision_text(np.array([0.7, 0.2, 0.1]), 0, classes) == "predicted normal (p=0.70)"
    assert decision_text(np.array([0.7, 0.24, 0.06]), 2, classes) == (
        "predicted amd (p=0.06) by the decision rule; most probable normal (p=0.70)"
    )
