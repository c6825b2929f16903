"""ResNeXt backbones, ``stride_in_1x1`` and ``bn_eps``: parity with torchvision, conversion, config.

Oracle: torchvision's ``resnext50_32x4d`` / ``resnext101_32x8d`` (seeded random weights, its
classification ResNet built with ``FrozenBatchNorm2d`` whose buffers are randomised so BN is not
the identity) run on a real photo normalised as torchvision does; MSRA-style blocks are
torchvision blocks with the stride moved from conv2 onto conv1. Same bar as the ResNet parity
test (tests/models/test_backbones.py): max abs error <= 1e-4 of the max abs value, per level.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import accel, build_model
from keras_maskrcnn.convert import torchvision as tvconvert
from keras_maskrcnn.layers.frozen_batch_norm import FrozenBatchNorm
from keras_maskrcnn.models import backbones
from keras_maskrcnn.models.backbones import ResNet, ResNetBlock, arch_arguments
from support.accel import assert_same_inference_outputs
from support.models import synthetic_batch, tiny_config
from support.photos import photo, relative_error

RTOL = 1e-4  # tests/models/test_backbones.py: test_resnet_fpn_matches_torchvision


def _randomise_bn_(torch, model, small_var=False):
    """Random FrozenBatchNorm2d buffers (as tests/models/test_backbones.py), in place; eval mode.
    ``small_var``: running_var in [1e-6, 1e-4] (where eps matters), the weight scaled by its
    square root so that activations stay O(1) with eps 0."""
    from torchvision.ops.misc import FrozenBatchNorm2d
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(*((1e-6, 1e-4) if small_var else (0.5, 2.0)))
                if small_var:
                    m.weight.mul_(m.running_var.sqrt())
    return model.eval()


def _torch_net(torch, torchvision, arch, seed=0, small_var=False):
    from torchvision.ops.misc import FrozenBatchNorm2d
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None, norm_layer=FrozenBatchNorm2d)
    return _randomise_bn_(torch, net, small_var)


def _torch_features(torch, net, x_nhwc):
    """C2..C5 of a torchvision classification ResNet, NHWC numpy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/models/test_backbones.py::_torch_run
    try:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            out = {}
            for level, stage in enumerate((net.layer1, net.layer2, net.layer3, net.layer4), 2):
                x = stage(x)
                out[f"C{level}"] = x.numpy().transpose(0, 2, 3, 1)
    finally:
        torch.set_num_threads(threads)
    return out


def _converted(net, **kwargs):
    resnet = ResNet(**kwargs)
    consumed = tvconvert.load_resnet_weights(resnet, net.state_dict(), prefix="",
                                             ignore_prefixes=("fc.",))
    assert consumed == {k for k in net.state_dict() if not k.startswith("fc.")}
    return resnet


def _assert_parity(torch, net, resnet, x, tag):
    theirs = _torch_features(torch, net, x)
    ours = {k: v.numpy() for k, v in resnet(x).items()}
    for level, t in theirs.items():
        assert ours[level].shape == t.shape, (tag, level)
        err = relative_error(ours[level], t)
        assert err <= RTOL, f"{tag} {level}: rel err {err:.2e}"


# ------------------------------------------------------------------------------ ResNeXt parity
def test_grouped_conv_kernel_converts_as_torch(torch):
    """torch (O, I / groups, kh, kw) -> Keras Conv2D(groups) (kh, kw, I / groups, O)."""
    torch.manual_seed(0)
    tconv = torch.nn.Conv2d(16, 8, 3, stride=2, padding=1, groups=4, bias=False)
    conv = backbones._conv(8, 3, 2, "conv", groups=4)
    conv.build((None, None, None, 16))
    reader = tvconvert.StateDictReader({"c.weight": tconv.weight})
    tvconvert.read_conv(reader, conv, "c.")
    reader.commit()
    assert tuple(conv.kernel.shape) == (3, 3, 4, 8)
    x = np.random.default_rng(0).normal(size=(2, 9, 11, 16)).astype(np.float32)
    with torch.no_grad():
        theirs = tconv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(backbones._apply_conv(conv, x).numpy(), theirs, rtol=1e-5,
                               atol=1e-5)


def test_resnext50_32x4d_matches_torchvision(torch, torchvision):
    net = _torch_net(torch, torchvision, "resnext50_32x4d")
    resnet = _converted(net, **arch_arguments("resnext50_32x4d"))
    assert resnet.stages[0][0].conv2.groups == 32
    assert tuple(resnet.stages[3][0].conv2.kernel.shape) == (3, 3, 32, 1024)
    for name, hw in (("astronaut", (224, 320)), ("coffee", (75, 101))):  # odd: C5 3x4
        _assert_parity(torch, net, resnet, photo(name, hw), f"resnext50 {name} {hw}")


def test_resnext101_32x8d_layers_match_torchvision(torch, torchvision):
    net = _torch_net(torch, torchvision, "resnext101_32x8d")
    resnet = _converted(net, **arch_arguments("resnext101_32x8d"))  # strict: every key, shape
    assert arch_arguments("resnext101_32x8d") == {"depth": 101, "groups": 32,
                                                  "width_per_group": 8}
    assert [len(s) for s in resnet.stages] == [3, 4, 23, 3]
    assert resnet.out_channels == {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}
    assert resnet.count_params() == sum(
        v.numel() for k, v in net.state_dict().items()
        if not k.startswith("fc.") and "num_batches" not in k)
    _assert_parity(torch, net, resnet, photo("coffee", (64, 96)), "resnext101_32x8d")


def test_names_of_the_config_are_the_backbones():
    from typing import get_args
    from keras_maskrcnn import config as config_lib
    from keras_maskrcnn.config import fields
    name_type = fields.field_types(config_lib.BackboneConfig)["name"]
    assert get_args(name_type) == backbones.NAMES
    assert arch_arguments("resnet50") == {"depth": 50, "groups": 1, "width_per_group": 64}
    assert arch_arguments("resnext101_64x4d") == {"depth": 101, "groups": 64,
                                                  "width_per_group": 4}
    with pytest.raises(ValueError, match="resnext"):
        arch_arguments("resnext18_2x2d")
    with pytest.raises(ValueError, match="groups=1"):
        ResNet(18, groups=32, width_per_group=4)
    with pytest.raises(ValueError, match="channel per group"):
        ResNet(50, width_multiplier=0.125, groups=32, width_per_group=4)


# ------------------------------------------------------------------------------ stride_in_1x1
def _msra_(net):
    """Moves every bottleneck's stride from conv2 (3x3) onto conv1 (1x1), in place."""
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return net


def test_stride_in_1x1_block_matches_patched_torchvision_bottleneck(torch):
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops.misc import FrozenBatchNorm2d
    torch.manual_seed(0)
    downsample = torch.nn.Sequential(torch.nn.Conv2d(24, 128, 1, stride=2, bias=False),
                                     FrozenBatchNorm2d(128))
    tblock = Bottleneck(24, 32, stride=2, downsample=downsample, groups=4, base_width=8,
                        norm_layer=FrozenBatchNorm2d)  # width int(32 * 8 / 64) * 4 = 16
    _randomise_bn_(torch, tblock)
    tblock.conv1.stride, tblock.conv2.stride = (2, 2), (1, 1)
    state = tblock.state_dict()
    x = np.random.default_rng(0).normal(size=(2, 15, 18, 24)).astype(np.float32)
    with torch.no_grad():
        theirs = tblock(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    outputs = {}
    for stride_in_1x1 in (True, False):
        block = ResNetBlock(32, 2, "bottleneck", True, groups=4, width_per_group=8,
                            stride_in_1x1=stride_in_1x1)
        block.build((None, None, None, 24))
        reader = tvconvert.StateDictReader(state)
        for k, (conv, bn) in enumerate(block.conv_bn_pairs(), start=1):
            tvconvert.read_conv(reader, conv, f"conv{k}.")
            tvconvert.read_frozen_bn(reader, bn, f"bn{k}.")
        tvconvert.read_conv(reader, block.shortcut_conv, "downsample.0.")
        tvconvert.read_frozen_bn(reader, block.shortcut_bn, "downsample.1.")
        reader.commit()
        assert reader.consumed == set(state)
        outputs[stride_in_1x1] = block(x).numpy()
    assert outputs[True].shape == theirs.shape == (2, 8, 9, 128)
    assert relative_error(outputs[True], theirs) <= 1e-5
    assert relative_error(outputs[False], theirs) > 1e-2  # v1.5 placement is a different network


def test_stride_in_1x1_resnet50_matches_patched_torchvision(torch, torchvision):
    net = _msra_(_torch_net(torch, torchvision, "resnet50"))
    resnet = _converted(net, depth=50, stride_in_1x1=True)
    assert resnet.stages[1][0].conv1.strides == (2, 2) and resnet.stages[1][0].conv2.strides == (
        1, 1)
    _assert_parity(torch, net, resnet, photo("coffee", (75, 101)), "resnet50 stride_in_1x1")


# ------------------------------------------------------------------------------ bn_eps
def _frozen_bns(layer):
    return [x for x in layer._flatten_layers(include_self=False) if isinstance(x, FrozenBatchNorm)]


def test_bn_eps_reaches_every_frozen_bn_from_the_config():
    m = build_model(tiny_config(**{"model.backbone.bn_eps": 0.0,
                                   "model.backbone.name": "resnext50_32x4d",
                                   "model.backbone.stride_in_1x1": "true"}), build=False)
    bns = _frozen_bns(m)
    assert len(bns) == 53  # stem + 16 bottlenecks x 3 + 4 shortcuts
    assert {bn.epsilon for bn in bns} == {0.0}
    assert m.backbone.stride_in_1x1 and m.backbone.groups == 32
    assert {bn.epsilon for bn in _frozen_bns(ResNet(18))} == {1e-5}
    config = ResNet(50, groups=32, width_per_group=4, stride_in_1x1=True, bn_eps=0.0,
                    name="r").get_config()
    clone = ResNet.from_config(config)
    assert clone.get_config() == config and {bn.epsilon for bn in _frozen_bns(clone)} == {0.0}
    block = ResNetBlock(16, 2, "bottleneck", True, groups=4, width_per_group=8,
                        stride_in_1x1=True, bn_eps=1e-3, name="blk")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
    assert restored.get_config() == block.get_config() and restored.conv1.strides == (2, 2)
    assert restored.conv2.groups == 4 and restored.bn2.epsilon == 1e-3


def test_bn_eps_zero_matches_torchvision_coco_v1_eps(torch, torchvision):
    """torchvision runs its V1 COCO weights with eps 0 (``overwrite_eps``): bn_eps=0 matches,
    the default 1e-5 does not once running_var is small."""
    from torchvision.models.detection._utils import overwrite_eps
    net = _torch_net(torch, torchvision, "resnet18", small_var=True)
    overwrite_eps(net, 0.0)
    x = photo("coffee", (64, 96))
    _assert_parity(torch, net, _converted(net, depth=18, bn_eps=0.0), x, "resnet18 eps 0")
    default = _converted(net, depth=18)
    theirs = _torch_features(torch, net, x)["C5"]
    assert relative_error(default(x)["C5"].numpy(), theirs) > 1e-2


# ------------------------------------------------------------------------------ Mask R-CNN
@pytest.fixture(scope="module")
def resnext_models():
    """A tiny Mask R-CNN on ResNeXt-50 32x4d (quarter width), with accel off and on."""
    settings = {"model.backbone.name": "resnext50_32x4d", "model.roi_heads.score_threshold": 0.0}
    plain = build_model(tiny_config(**settings, **{"model.accel": '"off"'}))
    fast = build_model(tiny_config(**settings, **{"model.accel": '"on"'}))
    fast.set_weights(plain.get_weights())
    return plain, fast


def test_resnext_mask_rcnn_trains_one_step_and_detects(resnext_models):
    m = resnext_models[0]
    m.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
    grouped = [b.conv2 for b in m.backbone.stages[1]]  # res3: trainable at freeze_at 2
    before = [c.kernel.numpy().copy() for c in grouped]
    batch = synthetic_batch(num_gt=(2, 1))
    history = m.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert all(not np.array_equal(a, c.kernel.numpy()) for a, c in zip(before, grouped))
    results = m.detect([batch["images"][0].astype(np.uint8)])
    assert len(results[0]["scores"]) > 0 and results[0]["masks"].shape[1:] == (128, 128)


def test_accel_keeps_grouped_convs_keras_and_outputs_equal(resnext_models):
    plain, fast = resnext_models
    fast.set_weights(plain.get_weights())  # the training test may have updated ``plain``
    from keras_maskrcnn.accel.layers import CpuConv2D
    for block in (b for stage in fast.backbone.stages for b in stage):
        assert type(block.conv2) is keras.layers.Conv2D  # grouped: not eligible
        assert type(block.conv3) is CpuConv2D  # the 1x1 convs are
    assert not accel.accelerate(fast.backbone)  # nothing eligible left
    assert_same_inference_outputs(plain, fast, synthetic_batch(num_gt=(1, 1)))
