"""minift.models.cnn: a BasicBlock against PyTorch 2.13 (stored fixture, train and eval mode),
float64 gradient checks, ResNet shapes and naming (resnet18 counted on the meta backend),
replace_head, and a few training steps that must lower the loss."""

import numpy as np
import pytest
from models_fixture import FIXTURE, draw, f64, randn

import minift as mf
from minift import functional as F
from minift import nn, optim
from minift.models.cnn import BasicBlock, ResNet


# --- PyTorch 2.13 reference (tests/fixtures/make_torch_models.py) --------------------------------
def test_basic_block_matches_pytorch_in_eval_and_train_mode():
    case = FIXTURE["basic_block"]
    assert FIXTURE["provenance"]["library"].startswith("torch 2.13.0")
    rng = np.random.default_rng(FIXTURE["provenance"]["seeds"]["basic_block"])
    block = f64(BasicBlock(3, 4, stride=2))
    floats = [[k, list(v.shape)] for k, v in block.state_dict().items() if v.dtype.kind == "f"]
    assert floats == case["keys"]  # torchvision's names, in torchvision's order
    block.load_state_dict({k: draw(rng, k, tuple(s)) for k, s in case["keys"]}, strict=False)
    x = mf.tensor(rng.standard_normal((2, 3, 6, 6)), requires_grad=True)

    y_eval = block.eval()(x)  # running statistics
    np.testing.assert_allclose(y_eval.numpy(), case["output_eval"], rtol=1e-10, atol=1e-10)
    y_train = block.train()(x)  # batch statistics, and the running ones move
    np.testing.assert_allclose(y_train.numpy(), case["output_train"], rtol=1e-10, atol=1e-10)
    y_train.backward(rng.standard_normal(y_train.shape))
    np.testing.assert_allclose(x.grad.numpy(), case["grad_input"], rtol=1e-10, atol=1e-10)
    for name in ("running_mean", "running_var"):
        expected = case[f"bn1.{name}"]
        np.testing.assert_allclose(getattr(block.bn1, name).numpy(), expected, rtol=1e-12)
    assert not np.allclose(y_eval.numpy(), y_train.numpy())  # the two modes really differ


# --- gradient checks (float64) ------------------------------------------------------------------
def _check(module, *inputs):
    params = list(module.parameters())
    assert mf.gradcheck(lambda *a: module(*a[: len(inputs)]), [*inputs, *params], max_entries=96)


@pytest.mark.parametrize("in_channels,out_channels,stride", [(2, 3, 2), (3, 3, 1)])
def test_gradcheck_basic_block_train_mode(in_channels, out_channels, stride):
    block = f64(BasicBlock(in_channels, out_channels, stride)).train()
    assert (block.downsample is None) == (stride == 1 and in_channels == out_channels)
    _check(block, randn(2, in_channels, 4, 4))


def test_gradcheck_resnet_head():
    model = f64(ResNet((1, 1), (2, 3), num_classes=2, in_channels=1))
    _check(model, randn(3, 1, 4, 4))


# --- shapes, names and the head ---------------------------------------------------------------
def test_resnet_shapes_per_stage_and_features():
    model = ResNet((1, 2, 1), (4, 8, 16), num_classes=5, in_channels=2)
    x = mf.randn(3, 2, 16, 16)
    assert model(x).shape == (3, 5)
    assert model.features(x).shape == (3, 16) and model.num_features == 16
    # stage i > 1 halves the resolution through its first block's stride and 1x1 shortcut
    assert model.layer1[0].downsample is None
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].downsample is not None
    assert model.layer2[1].downsample is None and len(model.layer2) == 2
    assert model.layer3(model.layer2(mf.randn(1, 4, 16, 16))).shape == (1, 16, 4, 4)


def test_resnet18_on_meta_has_torchvisions_count_and_names():
    with mf.use_backend("meta"):
        model = ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes=1000, stem="imagenet")
    assert model.num_parameters() == 11_689_512  # torchvision.models.resnet18()
    keys = list(model.state_dict())
    assert keys[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer2.0.downsample.0.weight" in keys and "layer4.1.bn2.running_var" in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert model.conv1.weight.shape == (64, 3, 7, 7)
    assert all(p.backend.name == "meta" for p in model.parameters())


def test_imagenet_stem_quarters_the_resolution_before_the_stages():
    model = ResNet((1,), (4,), num_classes=3, stem="imagenet")
    x = mf.randn(1, 3, 16, 16)
    stem = model.maxpool(F.relu(model.bn1(model.conv1(x))))
    assert stem.shape == (1, 4, 4, 4)  # 16 -> 8 (7x7 conv, stride 2) -> 4 (max pool)
    assert model(x).shape == (1, 3)


def test_replace_head_keeps_the_backbone_and_swaps_fc():
    model = f64(ResNet((1, 1), (4, 8), num_classes=10)).eval()
    x = mf.tensor(np.random.default_rng(1).standard_normal((2, 3, 8, 8)))
    before = model.features(x).numpy()
    backbone = {n: p for n, p in model.named_parameters() if not n.startswith("fc.")}
    head = model.replace_head(4)
    assert head is model.fc and head.weight.shape == (4, 8) and head.weight.dtype == np.float64
    assert model(x).shape == (2, 4)
    np.testing.assert_array_equal(model.features(x).numpy(), before)
    after = {n: p for n, p in model.named_parameters() if not n.startswith("fc.")}
    assert all(after[n] is p for n, p in backbone.items())
    assert model.num_parameters() == sum(p.numel() for p in backbone.values()) + 8 * 4 + 4


def test_linear_probe_trains_only_the_new_head():
    model = ResNet((1,), (4,), num_classes=10)
    model.requires_grad_(False)
    model.replace_head(2)  # a fresh head is trainable; the frozen features get no gradient
    loss = F.cross_entropy(model(mf.randn(4, 3, 8, 8)), np.array([0, 1, 0, 1]))
    loss.backward()
    assert model.fc.weight.grad is not None and model.conv1.weight.grad is None
    assert model.num_parameters(trainable_only=True) == 4 * 2 + 2


def test_a_few_training_steps_lower_the_loss():
    # class = which half of the image is brighter, under noise
    rng = np.random.default_rng(0)
    labels = np.arange(16) % 2
    images = rng.normal(0, 0.5, (16, 1, 8, 8)).astype(np.float32)
    images[labels == 0, :, :, :4] += 1.0
    images[labels == 1, :, :, 4:] += 1.0
    model = ResNet((1, 1), (4, 8), num_classes=2, in_channels=1)
    opt = optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(mf.tensor(images)), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_configs_and_inputs_fail_with_a_clear_error():
    with pytest.raises(ValueError, match="one entry per stage"):
        ResNet((2, 2), (16, 32, 64))
    with pytest.raises(ValueError, match="stem"):
        ResNet(stem="cifar")
    with pytest.raises(ValueError, match="expects 3 channels"):
        ResNet((1,), (4,))(mf.randn(1, 1, 8, 8))


def test_builds_on_meta_without_values():
    with mf.use_backend("meta"):
        model = ResNet()
        block = BasicBlock(8, 16, stride=2)
    assert model.fc.weight.backend.name == "meta" and model.num_parameters() > 0
    assert block.downsample[0].weight.shape == (16, 8, 1, 1)
    assert isinstance(block.downsample[1], nn.BatchNorm2d)
