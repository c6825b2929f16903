"""The detectron2 inference conventions of a Mask R-CNN built from config (model.roi_align.
sampling_ratio 0 and level_mapping, model.anchors.rounded / nominal_strides,
model.mask_head.paste, input.resize_style): wired by the builders into the model, and the
model's pooling, anchors, detect() and serving outputs follow them.

Oracles: torchvision.ops.roi_align(sampling_ratio=0, aligned=True) per detectron2 level
(poolers.assign_boxes_to_levels restated), a NumPy statement of detectron2's
DefaultAnchorGenerator, and the ``support.d2_masks`` transcription of its mask paste.
"""
import dataclasses
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model, export
from keras_maskrcnn.models.mask_rcnn import MaskRCNN
from support.models import tiny_config

D2 = {"model.roi_align.sampling_ratio": 0, "model.roi_align.aligned": "true",
      "model.roi_align.level_mapping": "detectron2", "model.anchors.rounded": "false",
      "model.anchors.nominal_strides": "true", "model.mask_head.paste": "detectron2",
      "input.resize_style": "detectron2", "model.roi_heads.score_threshold": 0.0}


@pytest.fixture(scope="module")
def d2_model():
    return build_model(tiny_config(**D2))


def _conventions(m):
    """(sampling ratio, level mapping) of every pooler, (rounded, nominal strides) of the
    anchors, and the mask paste style."""
    poolers = {(p.sampling_ratio, p.level_mapping)
               for p in (m.box_pooler, m.mask_pooler, m.keypoint_pooler)}
    assert len(poolers) == 1, poolers
    a = m.anchor_generator
    return (*poolers.pop(), a.rounded, a.nominal_strides, m.postprocessor.paste)


def test_defaults_keep_torchvision_conventions():
    m = build_model(tiny_config(), build=False)
    assert _conventions(m) + (m.preprocessor.resize_style,) == (
        2, "torchvision", True, False, "torchvision", "torchvision")


def test_settings_are_wired_and_survive_from_config(d2_model):
    for m in (d2_model, MaskRCNN.from_config(d2_model.get_config())):
        assert _conventions(m) == (0, "detectron2", False, True, "detectron2")
        assert m.preprocessor.detectron2_style and m.postprocessor.clip_boxes


def d2_levels(boxes):
    """detectron2's assign_boxes_to_levels (absolute levels 2..5) in NumPy float32."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    size = np.sqrt(np.maximum(area, 0)).astype(np.float32)
    levels = np.floor(4 + np.log2(size / np.float32(224) + np.float32(1e-8)))
    return np.clip(levels, 2, 5).astype(np.int64)


def test_model_pool_is_adaptive_roi_align_on_detectron2_levels(torch, torchvision, d2_model):
    rng = np.random.default_rng(3)
    height, width, channels = 256, 320, 5
    features = {f"P{l}": rng.normal(size=(2, height >> l, width >> l, channels)).astype(
        np.float32) for l in range(2, 7)}
    scale = np.exp(rng.uniform(np.log(3.0), np.log(900.0), (2, 30, 1)))
    sides = scale * np.exp(rng.uniform(-0.3, 0.3, (2, 30, 2)))  # all four levels
    corners = rng.uniform(-20.0, [width, height], (2, 30, 2))
    boxes = np.concatenate([corners, corners + sides], -1).astype(np.float32)
    got = d2_model.box_pooler({k: tf.constant(v) for k, v in features.items()}, boxes).numpy()
    flat = boxes.reshape(-1, 4)
    levels = d2_levels(flat)
    assert set(levels) == {2, 3, 4, 5}
    rois = torch.from_numpy(np.concatenate([np.repeat(np.arange(2.0), 30)[:, None], flat], 1)
                            .astype(np.float32))
    want = np.zeros((60, 7, 7, channels), np.float32)
    for level in range(2, 6):
        ids = np.nonzero(levels == level)[0]
        maps = torch.from_numpy(features[f"P{level}"]).permute(0, 3, 1, 2)
        pooled = torchvision.ops.roi_align(maps, rois[ids], (7, 7), 1 / 2**level, 0, True)
        want[ids] = pooled.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=1e-4)


def test_model_anchors_are_detectron2_default_anchor_generator(d2_model):
    images = tf.zeros((1, 160, 224, 3))  # P6 is 3 x 4: nominal stride 64 (floor: 53 x 56)
    features = {f"P{l}": tf.zeros((1, -(-160 // 2**l), -(-224 // 2**l), 1)) for l in range(2, 7)}
    got = d2_model.anchors(images, features).numpy()
    want = []
    for level, size in zip(range(2, 7), d2_model.anchor_sizes):
        cell = []
        for ratio in d2_model.aspect_ratios:  # one size per level: any order is the same
            w = np.sqrt(size ** 2.0 / ratio)
            h = ratio * w
            cell.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        cell = np.array(cell).astype(np.float32)
        stride = 2 ** level
        rows, cols = features[f"P{level}"].shape[1:3]
        sy, sx = np.meshgrid(np.arange(0, rows * stride, stride, dtype=np.float32),
                             np.arange(0, cols * stride, stride, dtype=np.float32),
                             indexing="ij")
        shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], 1)
        want.append((shifts[:, None] + cell[None]).reshape(-1, 4))
    np.testing.assert_array_equal(got, np.concatenate(want))


def test_training_forward_with_adaptive_mask_targets(d2_model):
    from support.models import synthetic_batch

    outputs = d2_model(synthetic_batch(num_gt=(2, 1)), training=True)
    targets = outputs["mask_targets"].numpy()
    assert np.isfinite(targets).all() and targets.min() >= 0 and targets.max() <= 1 + 1e-6
    losses = d2_model.compute_losses(outputs)
    assert all(np.isfinite(float(v)) for v in losses.values())


def test_detect_and_serving_use_detectron2_resize_and_paste(torch, d2_model):
    from support import d2_masks

    image = np.random.default_rng(5).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    result = d2_model.detect([image])[0]
    n = len(result["scores"])
    assert n > 0 and result["masks"].shape == (n, 70, 100)
    assert result["boxes"][:, 2].max() <= 100 and result["boxes"][:, 3].max() <= 70
    # the same detections pasted by the detectron2 transcription
    images, sizes = d2_model.preprocessor(tf.constant(image)[None])
    assert sizes.numpy().tolist() == [[90, 128]]  # detectron2's int(89.6 + 0.5); floor: 89
    outputs = d2_model({"images": images, "image_sizes": sizes})
    kept = d2_model.postprocessor.detections(outputs, sizes, tf.constant([70, 100]))
    np.testing.assert_allclose(result["boxes"], kept["boxes"].numpy(), rtol=0, atol=1e-4)
    probs = outputs["masks"].numpy()[0, :n]
    want = d2_masks.d2_paste_masks_in_image(probs, result["boxes"], (70, 100))
    assert (result["masks"] != want).mean() < 1e-3  # pixels within float rounding of 0.5
    torchvision_style = dataclasses.replace(d2_model.postprocessor, paste="torchvision",
                                            clip_boxes=False)
    torchvision_pasted = torchvision_style.detections(outputs, sizes, tf.constant([70, 100]))
    assert not np.array_equal(torchvision_pasted["masks"].numpy(), result["masks"])
    _, serve_images = export.serving_functions(d2_model, include_full_masks=True)
    served = serve_images(tf.constant(image)[None])
    np.testing.assert_allclose(served["boxes"].numpy()[0, :n], result["boxes"], atol=1e-4)
    np.testing.assert_array_equal(served["full_masks"].numpy()[0, :n].astype(bool),
                                  result["masks"])


@pytest.mark.slow  # about two minutes: export, load, two signatures
def test_saved_model_follows_the_detectron2_settings(d2_model, tmp_path):
    image = np.random.default_rng(6).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    reference = d2_model.detect([image])[0]
    n = len(reference["scores"])
    export.export_model(d2_model, str(tmp_path / "saved"), include_full_masks=True)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    for served in (loaded.signatures["serving_images"](images=tf.constant(image)[None]),
                   loaded.signatures["serving_default"](
                       image_bytes=tf.io.encode_png(image)[None])):
        assert int(served["num_detections"][0]) == n > 0
        np.testing.assert_allclose(served["boxes"].numpy()[0, :n], reference["boxes"],
                                   rtol=0, atol=1e-3)
        np.testing.assert_array_equal(served["full_masks"].numpy()[0, :n].astype(bool),
                                      reference["masks"])
