import pytest
import torch

from eyescreen.cli import main
from eyescreen.models import (
    GeneralizedMeanPool,
    cam_target,
    create_model,
    describe_model,
    list_models,
    split_head,
)


def test_registry_lists_the_study_models():
    assert {"resnet18", "seed-cnn"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        create_model("vgg", 4)


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnet18-gem",
        "resnet18-half",
        "resnet18-s2d",
        "resnet34",
        "resnet50",
        "seed-cnn",
        "tiny-cnn",
    ],
)
def test_models_build_from_scratch_with_a_spatial_cam_layer(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    features = []
    handle = cam_target(model).register_forward_hook(lambda m, i, o: features.append(o))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96))
    handle.remove()
    assert out.shape == (2, 5)
    assert features[0].ndim == 4 and features[0].shape[-1] > 1  # a feature map, not a vector

    # the head layer is the last linear one; split off, the model returns what it was fed
    head = model.get_submodule(model.head_layer)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert head is linears[-1] and head.out_features == 5
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        before = model(x)
        assert split_head(model) is head
        pooled = model(x)
    assert pooled.shape == (2, head.in_features)
    torch.testing.assert_close(head(pooled), before)


def test_resnet18_is_untrained_torchvision_architecture():
    a, b = create_model("resnet18", 4), create_model("resnet18", 4)
    assert sum(p.numel() for p in a.parameters()) == 11_178_564
    assert not torch.equal(a.conv1.weight, b.conv1.weight)  # random init each time: nothing loaded


@pytest.mark.parametrize("name, params", [("resnet34", 21_286_724), ("resnet50", 23_516_228)])
def test_deeper_resnets_are_torchvision_architectures_from_scratch(name, params):
    from torchvision import models

    model = create_model(name, 4)
    assert sum(p.numel() for p in model.parameters()) == params
    reference = getattr(models, name)(weights=None, num_classes=4)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]


def cam_map(model, size: int) -> torch.Tensor:
    features = []
    handle = cam_target(model).register_forward_hook(lambda m, i, o: features.append(o))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    handle.remove()
    return features[0]


def test_space_to_depth_resnet_sees_twice_the_pixels_at_the_feature_sizes_of_half_the_image():
    torch.manual_seed(0)
    s2d, plain = create_model("resnet18-s2d", 4), create_model("resnet18", 4)
    assert cam_map(s2d, 192).shape == cam_map(plain, 96).shape == (1, 512, 3, 3)
    # Every pixel of the full-size image reaches the stem: no pixel is dropped by the folding.
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    s2d.conv1(x).abs().sum().backward()
    assert (x.grad.abs().sum(1) > 0).all()
    # Only the stem differs from ResNet-18: the rest keeps its names and shapes.
    rest = {n: p.shape for n, p in plain.named_parameters() if not n.startswith("conv1.")}
    assert rest == {n: p.shape for n, p in s2d.named_parameters() if not n.startswith("conv1.")}


def test_generalised_mean_pooling_lets_a_small_strong_response_count():
    """One strong spot on a quiet 8x8 map: the average dilutes it 64 times, the generalised mean far less,
    and the generalised mean stays between the average and the maximum."""
    maps = torch.full((1, 2, 8, 8), 0.1)
    maps[0, 0, 2, 5] = 5.0  # channel 0: a small lesion; channel 1: nothing
    gem, mean = GeneralizedMeanPool()(maps).flatten(), maps.mean((-2, -1)).flatten()
    assert (mean <= gem + 1e-6).all() and (gem <= maps.amax((-2, -1)).flatten() + 1e-6).all()
    assert gem[0] / gem[1] > 2 * mean[0] / mean[1]
    model = create_model("resnet18-gem", 4)
    assert (
        isinstance(model.avgpool, GeneralizedMeanPool) and create_model("resnet18", 4).fc.in_features == 512
    )


def test_half_width_resnet_is_resnet18_with_half_the_channels_and_full_size_maps():
    """The same layers, blocks and strides as ResNet-18 (names included, which initial weights and CAMs
    rely on), each with half the channels: a quarter of the weights, the same feature-map sizes."""
    torch.manual_seed(0)
    half, full = create_model("resnet18-half", 4), create_model("resnet18", 4)
    shapes = {name: p.shape for name, p in half.named_parameters()}
    for name, p in full.named_parameters():
        expected = tuple(n // 2 if i < 2 and n > 4 else n for i, n in enumerate(p.shape))
        if name.startswith("conv1"):
            expected = (32, 3, 7, 7)  # the first layer sees the 3 colours
        assert shapes.pop(name) == expected, name
    assert not shapes
    maps = {}
    for model in (half, full):
        model.layer4.register_forward_hook(lambda m, i, o: maps.update({m: o.shape}))  # returns None
        model.eval()(torch.randn(1, 3, 256, 256))
    assert [tuple(s) for s in maps.values()] == [(1, 256, 8, 8), (1, 512, 8, 8)]
    convs = [m.weight for m in half.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(
        0.5 < w.std() * (w.shape[0] * w[0, 0].numel()) ** 0.5 / 2**0.5 < 1.5 for w in convs
    )  # He, fan-out


def test_space_to_depth_resnet_names_an_odd_image_size():
    with pytest.raises(ValueError, match="even image size, got 97x97"):
        create_model("resnet18-s2d", 4)(torch.randn(1, 3, 97, 97))


def test_models_command_says_what_each_model_is(capsys):
    assert main(["models"]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == set(list_models()) and all(lines.values())
    assert "folds 2x2 pixels" in lines["resnet18-s2d"] and "shared resnet34" in lines["resnet34-binocular"]
    with pytest.raises(ValueError, match="unknown model 'vgg-binocular'"):
        describe_model("vgg-binocular")


def test_every_subcommand_the_parser_offers_has_a_handler():
    import argparse

    from eyescreen.cli import COMMANDS
    from eyescreen.cli_args import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(COMMANDS)
