import pytest
import torch

from eyescreen.models import cam_target, create_model, list_models


def test_registry_lists_the_study_models():
    assert {"resnet18", "seed-cnn"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        create_model("vgg", 4)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "seed-cnn", "tiny-cnn"])
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
