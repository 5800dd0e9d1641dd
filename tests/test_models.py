"""Model registry: every name builds and runs on small and CIFAR-sized input; weights load safely."""

from __future__ import annotations

import pytest
import torch

from nnrecipe.errors import UserError
from nnrecipe.models import build_model, head_parameter_names, model_names
from nnrecipe.models.pretrained import load_matching, read_state_dict


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32)])
def test_builtin_models_give_one_logit_per_class(name, channels, size):
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size, dropout=0.1).eval()
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", [*model_names(), "timm:resnet10t"])
def test_dropout_leaves_the_weights_names_as_they_are(name):
    """Inference builds a run's model without dropout: resnet18 with model.dropout trained, then every verb
    (its own report first) failed to load fc.1.weight into fc.weight."""
    keys = [set(build_model(name, 7, 3, 32, dropout=p).state_dict()) for p in (0.0, 0.3)]
    assert keys[0] == keys[1]
    torch.manual_seed(0)
    trained = build_model(name, 7, 3, 32, dropout=0.3).eval()
    served = build_model(name, 7, 3, 32)
    served.load_state_dict(trained.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(trained(x), served.eval()(x))  # dropout is the identity in eval


@pytest.mark.parametrize("name", ["tv:mobilenet_v3_small", "timm:resnet10t"])
def test_torchvision_and_timm_models_by_name(name):
    model = build_model(name, num_classes=5, in_channels=3, image_size=32).eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    head = head_parameter_names(model)
    assert head and all(p.endswith(("weight", "bias")) for p in head)


def test_convnet_is_the_classic_shape():
    model = build_model("convnet", 10, 3, 32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 8 * 8, 256), (256, 10)]


def test_state_dict_files_load_with_the_head_reinitialised(tmp_path):
    source = build_model("convnet", 10, 1, 8)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    target = build_model("convnet", 3, 1, 8)
    loaded, fresh = load_matching(target, read_state_dict(tmp_path / "w.pt"))
    assert fresh == ["10.bias", "10.weight"] and "0.weight" in loaded
    assert torch.equal(target[0].weight, source[0].weight)


def test_pickled_objects_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Payload()}, tmp_path / "evil.pt")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 2)
    for name in ("evil.pt", "noise.pt"):  # one line: it was torch's page on weights_only and how to turn it off
        with pytest.raises(UserError) as e:
            read_state_dict(tmp_path / name)
        assert (
            str(e.value)
            == f"model.init_from: cannot read weights from {tmp_path / name} (not tensors alone, or damaged)"
        )


def test_weights_that_match_nothing_are_an_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match="no tensor in .* matches this model"):
        load_matching(
            build_model("mlp", 3, 1, 8), read_state_dict(tmp_path / "w.safetensors"), str(tmp_path / "w.safetensors")
        )


@pytest.mark.parametrize("name, size", [("tv:alexnet", 8), ("timm:vit_tiny_patch16_224", 32)])
def test_a_model_that_cannot_take_the_images_is_named_before_training(name, size):
    """A pooling layer's RuntimeError in the first batch (or timm's size assertion) before."""
    from nnrecipe.tasks.image_inputs import ImageSpec, takes_its_images

    spec = ImageSpec(model=name, classes=["a", "b"], channels=3, image_size=size, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(
        UserError, match=rf"model.name {name}: cannot take 3x{size}x{size} images .*larger data.image_size"
    ):
        takes_its_images(spec.build_model(), spec, name)
