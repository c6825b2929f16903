"""MaskRCNN on a tiny config, what is specific to it (the contract every detector passes:
tests/models/test_detector_contract.py): frozen stages, shapes, fresh-process load, box-only
models, ImageNet backbone weights, every config file, mixed precision, foreground slots."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model, config
from keras_maskrcnn.models.mask_rcnn import MaskRCNN
from keras_maskrcnn.models.yolact import YOLACT
from support import CONFIGS
from support.models import synthetic_batch, tiny_config

@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config())


def test_frozen_stages_are_not_trainable():
    m = build_model(tiny_config(**{"model.backbone.freeze_at": 2}))
    names = [v.path for v in m.trainable_variables]
    assert not any("stem" in n for n in names)
    assert any("fpn" in n for n in names)


def test_inference_outputs_and_static_shapes(model):
    batch = synthetic_batch(num_gt=(1, 1))
    out = model({"images": batch["images"], "image_sizes": batch["image_sizes"]})
    d = model.detection_generator.detections_per_image
    assert out["boxes"].shape == (2, d, 4)
    assert out["masks"].shape == (2, d, 28, 28)
    assert out["keypoints"].shape == (2, d, 4, 3)
    n = out["num_detections"].numpy()
    classes = out["classes"].numpy()
    for i in range(2):
        assert (classes[i, :n[i]] > 0).all() and (classes[i, n[i]:] == 0).all()


FRESH_LOAD = r"""
import sys, numpy as np, keras
from keras_maskrcnn import MaskRCNN  # registers the class and its from_config builder
model = keras.saving.load_model(sys.argv[1])
assert isinstance(model, MaskRCNN) and model.category_ids == [11, 22, 33], model.category_ids
inputs = dict(np.load(sys.argv[2]))
np.save(sys.argv[3], model(inputs)["boxes"].numpy())
"""


def test_keras_file_loads_in_a_fresh_process(tmp_path):
    m = build_model(tiny_config(), category_ids=[11, 22, 33])
    batch = synthetic_batch(num_gt=(1, 1))
    inputs = {"images": batch["images"], "image_sizes": batch["image_sizes"]}
    m.save(str(tmp_path / "model.keras"))
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", FRESH_LOAD, str(tmp_path / "model.keras"),
                    str(tmp_path / "inputs.npz"), str(tmp_path / "boxes.npy")],
                   check=True, timeout=300, env=env, cwd=os.path.join(CONFIGS, ".."))
    np.testing.assert_allclose(np.load(tmp_path / "boxes.npy"), m(inputs)["boxes"].numpy(),
                               atol=1e-5)


def test_detect_rejects_bad_images(model):
    with pytest.raises(ValueError, match="uint8"):
        model.detect([np.zeros((32, 32, 3), np.float32)])


def test_box_only_model_has_no_mask_outputs():
    m = build_model(tiny_config(**{"model.mask_head.enabled": "false",
                                   "model.keypoint_head.enabled": "false"}))
    out = m(synthetic_batch(num_gt=(1,)), training=True)
    assert "mask_logits" not in out and "keypoint_logits" not in out
    assert set(m.compute_losses(out)) == {"rpn_objectness", "rpn_box", "box_classification",
                                          "box_regression"}


def test_backbone_weights_from_a_torchvision_imagenet_checkpoint(torch, torchvision, tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    path = str(tmp_path / "resnet18.pth")
    torch.save(net.state_dict(), path)
    m = build_model(tiny_config(**{"model.backbone.width_multiplier": 1.0,
                                   "model.backbone.weights": path}))
    expected = net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    np.testing.assert_array_equal(m.backbone.stem_conv.kernel.numpy(), expected)


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(CONFIGS) if n.endswith(".yaml")))
def test_every_config_file_builds_its_model(name):
    """builders read every section the model needs; the model keeps only parts and values."""
    cfg = config.load_config(os.path.join(CONFIGS, name))
    m = build_model(cfg, build=False)
    assert m.num_classes == cfg.model.num_classes
    assert m.config_dict["model"] == config.config_to_dict(cfg)["model"]
    if cfg.model.architecture == "yolact":
        assert isinstance(m, YOLACT) and m.mask_type == "image"
        assert m.preprocessor.policy == "fixed_square"
        assert m.preprocessor.min_size == m.preprocessor.max_size == cfg.input.size
        assert m.protonet.num_prototypes == cfg.model.yolact.num_prototypes
        assert m.anchor_scales == cfg.model.yolact.anchor_scales
        return
    assert isinstance(m, MaskRCNN) and m.mask_type == "box"
    assert (m.mask_head is not None) == cfg.model.mask_head.enabled
    assert (m.keypoint_head is not None) == cfg.model.keypoint_head.enabled
    assert m.preprocessor.min_size == cfg.input.min_size_test
    assert m.preprocessor.max_size == cfg.input.max_size
    c4 = cfg.model.backbone.variant == "c4"  # one level, no FPN (tests/models/test_c4.py)
    assert m.feature_levels == (("C4",) if c4 else cfg.model.fpn.levels)
    assert (m.fpn is None) == c4 and (m.roi_feature_head is not None) == c4
    assert m.config_dict["model"] == config.config_to_dict(cfg)["model"]
    assert not any(hasattr(m, a) for a in ("model_settings", "input_settings"))


def test_missing_initial_weights_file_is_named():
    with pytest.raises(FileNotFoundError, match="model.weights: no such file: /nope.h5"):
        build_model(tiny_config(**{"model.weights": "/nope.h5"}))


def test_mixed_bfloat16_policy_trains_and_keeps_geometry_float32():
    m = build_model(tiny_config(**{"model.dtype_policy": "mixed_bfloat16"}))
    assert m.backbone.dtype_policy.name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    outputs = m(synthetic_batch(num_gt=(2, 1)), training=True)
    for name, value in m.compute_losses(outputs).items():
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()), name
    detections = m(synthetic_batch(num_gt=(1,)), training=False)
    assert detections["boxes"].dtype == tf.float32


def test_heads_on_foreground_slots_only_match_all_fixed_slots(model, monkeypatch):
    """Mask / keypoint heads on the F' used slots give the losses of all F fixed slots."""
    from keras_maskrcnn.models import mask_rcnn

    batch = synthetic_batch(num_gt=(3, 1))
    sampler = model.roi_sampler
    num_fg = int(sampler.batch_size_per_image * sampler.positive_fraction)
    seeds = [v for v in model.variables if "seed" in v.path]
    assert seeds
    start = [v.numpy().copy() for v in seeds]

    def run():
        for v, value in zip(seeds, start):
            v.assign(value)
        outputs = model(batch, training=True)
        return outputs, model.compute_losses(outputs)

    compact_outputs, compact = run()
    monkeypatch.setattr(mask_rcnn, "foreground_slots", lambda s, _: (
        s["rois"][:, :num_fg], s["roi_classes"][:, :num_fg], s["matched_gt"][:, :num_fg]))
    full_outputs, full = run()
    used = compact_outputs["fg_roi_classes"].shape[1]
    assert 0 < used < num_fg == full_outputs["fg_roi_classes"].shape[1]
    positives = (full_outputs["fg_roi_classes"].numpy() > 0).sum(axis=1)
    assert used == positives.max()
    assert (full_outputs["fg_roi_classes"].numpy()[:, used:] <= 0).all()
    for name in full:
        np.testing.assert_allclose(compact[name].numpy(), full[name].numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=name)


def test_training_step_with_no_positive_roi_anywhere(model):
    """F' = 0 (no GT in the batch): the heads run on zero RoIs, losses finite, mask loss 0."""
    with tf.GradientTape() as tape:
        outputs = model(synthetic_batch(num_gt=(0, 0)), training=True)
        losses = model.compute_losses(outputs)
        total = tf.add_n(list(losses.values()))
    assert outputs["mask_logits"].shape[1] == 0
    assert all(np.isfinite(v.numpy()) for v in losses.values())
    assert float(losses["mask"]) == 0.0 and float(losses["keypoint"]) == 0.0
    grads = tape.gradient(total, model.trainable_variables)
    head = [g for v, g in zip(model.trainable_variables, grads) if "mask_head" in v.path]
    assert head and all(g is None or float(tf.reduce_max(tf.abs(g))) == 0.0 for g in head)
    assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)


def test_rpn_targets_on_used_gt_rows_match_all_padded_rows(model, monkeypatch):
    """Matching anchors against the M' used GT rows, and sampling the mask targets from the
    M' used GT masks, gives the losses of all M padded rows."""
    from keras_maskrcnn.models import mask_rcnn
    from keras_maskrcnn.ops.targets import used_gt_rows

    batch = synthetic_batch(num_gt=(2, 3), max_gt=12)
    batch["gt_classes"][0, 1] = -1  # a padded row between valid ones (crowd-like gap)
    boxes, classes = used_gt_rows(tf.constant(batch["gt_boxes"]),
                                  tf.constant(batch["gt_classes"]))
    assert classes.shape[1] == 3 and (classes.numpy() > 0).sum() == 4
    _, none = used_gt_rows(tf.constant(batch["gt_boxes"]), -tf.ones_like(batch["gt_classes"]))
    assert none.shape[1] == 1  # one padded row when no image has GT
    seeds = [v for v in model.variables if "seed" in v.path]
    start = [v.numpy().copy() for v in seeds]

    def losses():
        for v, value in zip(seeds, start):
            v.assign(value)
        return model.compute_losses(model(batch, training=True))

    used = losses()
    monkeypatch.setattr(mask_rcnn, "used_gt_rows", lambda b, c: (b, c))
    full = losses()
    for name in full:
        np.testing.assert_allclose(used[name].numpy(), full[name].numpy(), rtol=1e-6,
                                   err_msg=name)
