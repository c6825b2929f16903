"""The ResNet-C4 variant (``model.backbone.variant: c4``): config checks, the res5 RoI head
against torchvision's ``layer4``, anchors, training, detect, saving, accel and export."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model, config
from keras_maskrcnn.config import ConfigError
from keras_maskrcnn.convert.torchvision import StateDictReader, read_conv, read_frozen_bn
from keras_maskrcnn.models.backbones import ResNet
from keras_maskrcnn.models.res5_head import Res5Head
from support.accel import assert_same_inference_outputs
from support.models import synthetic_batch, tiny_config

C4 = {"model.backbone.variant": "c4", "model.backbone.name": "resnet50",
      "model.backbone.width_multiplier": 0.125, "model.keypoint_head.enabled": "false",
      "model.box_head.pool_size": 14, "model.mask_head.num_convs": 0,
      "model.roi_heads.score_threshold": 0.0}


def c4_config(**extra):
    return tiny_config(**{**C4, **extra})


@pytest.fixture(scope="module")
def model():
    return build_model(c4_config())


def _inputs(batch):
    return {"images": batch["images"], "image_sizes": batch["image_sizes"]}


def test_config_checks_name_the_fields():
    with pytest.raises(ConfigError, match="model.keypoint_head.enabled: backbone.variant c4 "
                                          "has no keypoint head"):
        tiny_config(**{**C4, "model.keypoint_head.enabled": "true"})
    with pytest.raises(ConfigError, match="box_head.pool_size: .*even"):
        c4_config(**{"model.box_head.pool_size": 7})
    with pytest.raises(ConfigError, match="mask_head.pool_size: .*must equal box_head"):
        c4_config(**{"model.mask_head.pool_size": 12})
    cfg = c4_config()
    assert cfg.model.mask_size == 14 and tiny_config().model.mask_size == 28
    fpn = config.Config().model
    assert fpn.backbone.variant == "fpn" and fpn.mask_size == fpn.mask_head.mask_size == 28


def test_parts_of_the_c4_model(model):
    assert model.fpn is None and model.box_head is None
    assert isinstance(model.roi_feature_head, Res5Head)
    assert model.backbone.max_level == 4 and len(model.backbone.stages) == 3
    assert model.feature_levels == ("C4",) and model.roi_levels == (4, 4)
    assert model.num_anchors == model.rpn_head.num_anchors == 15
    head = model.roi_feature_head
    assert [b.name for b in head.blocks] == ["res5_0", "res5_1", "res5_2"]
    assert head.blocks[0].strides == 2 and head.blocks[0].shortcut_conv is not None
    assert head.in_channels == model.backbone.out_channels["C4"] == 128
    assert model.box_predictor.cls_score.kernel.shape[0] == head.out_channels == 256
    assert model.mask_head.num_convs == 0 and model.mask_size == 14


def test_c4_anchors_are_ratio_major_with_every_size(model):
    """One level, stride 16; anchor a = ratio index * 5 + size index (torchvision's order)."""
    images = tf.zeros((1, 64, 96, 3))
    features = {"C4": tf.zeros((1, 4, 6, 8))}
    anchors = model.anchors(images, features).numpy()  # (4 * 6 * 15, 4)
    assert anchors.shape == (4 * 6 * 15, 4)
    cell = anchors[:15]
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    sizes = np.array(model.anchor_sizes, np.float32)  # 5 sizes, tiny: 8..128
    assert len(sizes) == 5
    for r, ratio in enumerate((0.5, 1.0, 2.0)):
        np.testing.assert_allclose(h[5 * r:5 * r + 5], np.round(sizes * np.sqrt(ratio) / 2) * 2,
                                   atol=1)
        np.testing.assert_allclose(w[5 * r:5 * r + 5], np.round(sizes / np.sqrt(ratio) / 2) * 2,
                                   atol=1)
    np.testing.assert_allclose(anchors[15] - anchors[0], [16, 0, 16, 0])  # next location


def _load_layer4(head, layer4, torch):
    """torchvision ``layer4`` weights -> ``Res5Head`` with the converter's read helpers."""
    state = {k: v for k, v in layer4.state_dict().items()}
    reader = StateDictReader(state)
    for j, block in enumerate(head.blocks):
        for k, (conv, bn) in enumerate(block.conv_bn_pairs(), start=1):
            read_conv(reader, conv, f"{j}.conv{k}.")
            read_frozen_bn(reader, bn, f"{j}.bn{k}.")
        if block.shortcut_conv is not None:
            read_conv(reader, block.shortcut_conv, f"{j}.downsample.0.")
            read_frozen_bn(reader, block.shortcut_bn, f"{j}.downsample.1.")
    reader.check_no_leftover("")
    reader.commit()


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_res5_head_equals_torchvision_layer4(name, torch, torchvision):
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():  # non-trivial frozen statistics and affine parameters
        for bn in net.layer4.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
    groups, width = (32, 4) if name.startswith("resnext") else (1, 64)
    head = Res5Head(depth=50, groups=groups, width_per_group=width)
    pooled = np.random.default_rng(0).normal(size=(2, 3, 14, 14, 1024)).astype(np.float32)
    head.build(pooled.shape)
    _load_layer4(head, net.layer4, torch)
    got = head(tf.constant(pooled)).numpy()  # (2, 3, 7, 7, 2048)
    with torch.no_grad():
        nchw = torch.from_numpy(pooled.reshape(6, 14, 14, 1024).transpose(0, 3, 1, 2).copy())
        expected = net.layer4(nchw).numpy().transpose(0, 2, 3, 1).reshape(2, 3, 7, 7, 2048)
    assert got.shape == expected.shape
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < 1e-4, error


def test_res5_head_settings_and_freezing():
    head = Res5Head(depth=101, width_multiplier=0.25, stride_in_1x1=True, bn_eps=0.0,
                    freeze_at=5)
    assert head.blocks[0].conv1.strides == (2, 2) and head.blocks[0].conv2.strides == (1, 1)
    assert {b.bn1.epsilon for b in head.blocks} == {0.0}
    head.build((None, None, 14, 14, head.in_channels))
    assert not head.trainable_weights
    head.trainable = True  # freeze_at 5 keeps it frozen, as ResNet's stages
    assert not head.trainable_weights
    clone = Res5Head.from_config(head.get_config())
    assert clone.get_config() == head.get_config()
    assert Res5Head(freeze_at=2, width_multiplier=0.25).trainable
    with pytest.raises(ValueError, match="max_level"):
        ResNet(max_level=3)


def test_c4_backbone_is_the_first_three_stages_of_the_resnet():
    full = ResNet(depth=50, width_multiplier=0.125, name="backbone")
    c4 = ResNet(depth=50, width_multiplier=0.125, max_level=4, name="backbone")
    images = tf.constant(np.random.default_rng(3).normal(size=(1, 70, 90, 3)), tf.float32)
    full(images)
    features = c4(images)
    assert sorted(features) == ["C2", "C3", "C4"] == sorted(c4.out_channels)
    shapes = c4.compute_output_shape((1, 70, 90, 3))
    assert {k: tuple(v.shape) for k, v in features.items()} == shapes
    assert [w.path for w in c4.weights] == [w.path for w in full.weights][:len(c4.weights)]
    c4.set_weights(full.get_weights()[:len(c4.weights)])
    np.testing.assert_array_equal(c4(images)["C4"].numpy(), full(images)["C4"].numpy())
    assert ResNet.from_config(c4.get_config()).max_level == 4


def test_fit_one_step_finite_losses_and_weights_change():
    m = build_model(c4_config())
    m.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)
    batch = synthetic_batch(num_gt=(2, 1), num_keypoints=0)
    before = [v.numpy().copy() for v in m.trainable_variables]
    history = m.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert set(history.history) >= {"mask_loss", "box_classification_loss", "rpn_box_loss"}
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert any("res5_head" in v.path for v in m.trainable_variables)
    unchanged = [v.path for a, v in zip(before, m.trainable_variables)
                 if np.array_equal(a, v.numpy())]
    assert not unchanged, unchanged


def test_training_batch_without_gt_runs_res5_on_no_foreground(model):
    outputs = model(synthetic_batch(num_gt=(0, 0), num_keypoints=0), training=True)
    losses = model.compute_losses(outputs)
    assert outputs["mask_logits"].shape[1] == 0 and float(losses["mask"]) == 0.0
    assert all(np.isfinite(v.numpy()) for v in losses.values())


def test_detect_returns_boxes_scores_labels_and_masks(model):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((100, 150), (128, 90))]
    outputs = model(_inputs(synthetic_batch(num_gt=(1, 1), num_keypoints=0)))
    assert outputs["masks"].shape[2:] == (14, 14)
    for image, result in zip(images, model.detect(images)):
        n = len(result["scores"])
        assert n > 0 and result["boxes"].shape == (n, 4) and result["labels"].shape == (n,)
        assert result["masks"].shape == (n,) + image.shape[:2]
        assert result["masks"].dtype == bool


def test_weights_and_keras_round_trips(model, tmp_path):
    inputs = _inputs(synthetic_batch(num_gt=(1, 1), num_keypoints=0))
    expected = model(inputs)
    model.save(str(tmp_path / "model.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    assert isinstance(loaded.roi_feature_head, Res5Head) and loaded.fpn is None
    model.save_weights(str(tmp_path / "model.weights.h5"))
    other = build_model(c4_config())
    other.load_weights(str(tmp_path / "model.weights.h5"))
    for got in (loaded(inputs), other(inputs)):
        for key in ("boxes", "scores", "classes", "masks"):
            np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-5,
                                       err_msg=key)


def test_accel_on_gives_the_same_outputs(model):
    """tests/accel/test_accel.py's tolerance; the res5 head's eligible convs are swapped."""
    from keras_maskrcnn.accel.layers import CpuConv2D

    plain = build_model(c4_config(**{"model.accel": '"off"'}))
    fast = build_model(c4_config(**{"model.accel": '"on"'}))
    fast.set_weights(plain.get_weights())
    res5 = list(fast.roi_feature_head._flatten_layers())
    assert any(type(layer) is CpuConv2D for layer in res5)
    assert not any(getattr(layer, "winograd", False) for layer in res5)
    assert_same_inference_outputs(plain, fast, synthetic_batch(num_gt=(1, 1), num_keypoints=0))


def test_export_serving_output_equals_detect(model, tmp_path):
    from keras_maskrcnn import export as export_lib

    image = np.random.default_rng(2).integers(0, 255, (96, 120, 3), dtype=np.uint8)
    reference = model.detect([image])[0]
    export_lib.export_model(model, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    served = loaded.signatures["serving_images"](images=tf.constant(image[None]))
    n = int(served["num_detections"][0])
    assert n == len(reference["scores"]) > 0
    np.testing.assert_allclose(served["boxes"][0, :n], reference["boxes"], atol=1e-3)
    np.testing.assert_allclose(served["scores"][0, :n], reference["scores"], atol=1e-5)
    np.testing.assert_array_equal(served["classes"][0, :n], reference["labels"])
    assert served["masks"].shape[2:] == (14, 14)


def test_fpn_model_is_unchanged_by_the_variant_field():
    cfg = tiny_config()
    assert cfg.model.backbone.variant == "fpn"
    same = dataclasses.replace(cfg.model, backbone=dataclasses.replace(cfg.model.backbone))
    assert same == cfg.model
    m = build_model(cfg, build=False)
    assert m.roi_feature_head is None and m.fpn is not None and m.backbone.max_level == 5
