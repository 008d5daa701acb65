import pytest
import torch

from eyescreen.fusion import LEFT, POOLINGS, RIGHT, Binocular


def model(pooling, backbone="tiny-cnn"):
    torch.manual_seed(0)
    return Binocular(backbone, num_classes=3, pooling=pooling).eval()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_an_absent_eye_has_no_influence(pooling):
    m = model(pooling)
    x = torch.randn(3, 2, 3, 32, 32)
    mask = torch.tensor([[True, False], [False, True], [True, True]])
    _, patient = m(x, mask)
    noisy = x.clone()
    noisy[0, LEFT] = torch.randn(3, 32, 32) * 50
    noisy[1, RIGHT] = 0
    eyes2, patient2 = m(noisy, mask)
    assert torch.allclose(patient, patient2, atol=1e-6)
    assert torch.isfinite(patient2).all()
    # per-eye logits depend on that eye alone, whatever the batch holds
    assert torch.allclose(eyes2[2], m(x[2:3])[0][0], atol=1e-6)


def test_mirroring_makes_a_left_eye_look_like_a_right_eye():
    m = model("mean")
    right = torch.randn(1, 3, 32, 32)
    as_left = right.flip(-1)  # the same retina photographed as a left eye
    eyes, _ = m(torch.stack([right, as_left], dim=1))
    assert torch.allclose(eyes[0, RIGHT], eyes[0, LEFT], atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_swapping_sides_is_symmetric_for_symmetric_pooling(pooling):
    m = model(pooling)
    x = torch.randn(2, 2, 3, 32, 32)
    swapped = torch.stack([x[:, LEFT].flip(-1), x[:, RIGHT].flip(-1)], dim=1)  # each eye in the other slot
    assert torch.allclose(m(x)[1], m(swapped)[1], atol=1e-5)
    weights = m.eye_weights(x, torch.ones(2, 2, dtype=torch.bool))
    assert torch.allclose(weights.sum(1), torch.ones(2))


def test_concat_keeps_the_sides_apart_and_resnet_backbone_works():
    m = model("concat")
    x = torch.randn(2, 2, 3, 32, 32)
    swapped = torch.stack([x[:, LEFT].flip(-1), x[:, RIGHT].flip(-1)], dim=1)
    assert not torch.allclose(m(x)[1], m(swapped)[1])
    eyes, patient = model("attention", "resnet18")(torch.randn(2, 2, 3, 64, 64))
    assert eyes.shape == (2, 2, 3) and patient.shape == (2, 3)
    with pytest.raises(ValueError, match="at least one eye"):
        m(x, torch.tensor([[True, True], [False, False]]))
