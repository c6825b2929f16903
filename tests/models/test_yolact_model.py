"""YOLACT on a tiny config, what is specific to it (the contract every detector passes:
tests/models/test_detector_contract.py): contract parts, training and inference shapes, masks
cropped in prototype pixels, detect on non-square images, export."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import build_model
from keras_maskrcnn.layers.protonet import Protonet
from keras_maskrcnn.models.yolact import YOLACT
from support import models as models_support

SIZE = models_support.SIZE
NUM_PROTOTYPES = models_support.YOLACT_PROTOTYPES
tiny_config = models_support.tiny_yolact_config  # yolact_shapes.yaml shrunk


def synthetic_batch(num_gt=(2, 0), size=SIZE, max_gt=3, seed=0):
    """Noise images with filled rectangles as GT (an image may have no GT at all)."""
    return models_support.synthetic_batch(num_gt, size, num_keypoints=0, max_gt=max_gt,
                                          seed=seed)


def inference_inputs(batch):
    return {"images": batch["images"], "image_sizes": batch["image_sizes"]}


@pytest.fixture(scope="module")
def model():
    return build_model(tiny_config())


def test_parts_follow_the_contract(model):
    assert isinstance(model, YOLACT) and model.mask_type == "image"
    assert isinstance(model.protonet, Protonet)
    assert [c.name for c in model.protonet.convs] == [f"conv_{i}" for i in range(5)]
    assert [c.kernel_size for c in model.protonet.convs] == [(3, 3)] * 4 + [(1, 1)]
    assert model.protonet.convs[4].filters == NUM_PROTOTYPES
    head = model.prediction_head
    assert head.num_anchors == 3 and len(head.convs) == 1
    assert head.output_channels == {"box_deltas": 4, "class_logits": 4,
                                    "mask_coefficients": NUM_PROTOTYPES}
    assert model.semantic_head.filters == 3 and model.semantic_head.kernel_size == (1, 1)
    assert len(model.fpn.lateral_convs) == 3 and len(model.fpn.extra_convs) == 2
    assert model.fpn.output_levels == ("P3", "P4", "P5", "P6", "P7")


def test_training_outputs_every_gt_on_an_anchor_and_shapes(model):
    outputs = model(synthetic_batch(num_gt=(2, 0)), training=True)
    assert (outputs["labels"].numpy()[0] > 0).sum() >= 2  # every GT is forced onto an anchor
    assert outputs["prototypes"].shape == (2, SIZE // 4, SIZE // 4, NUM_PROTOTYPES)
    assert outputs["segmentation_logits"].shape == (2, SIZE // 8, SIZE // 8, 3)


def test_batch_without_any_gt_has_zero_positive_losses(model):
    outputs = model(synthetic_batch(num_gt=(0, 0)), training=True)
    losses = {k: float(v) for k, v in model.compute_losses(outputs).items()}
    assert losses["box"] == 0.0 and losses["mask"] == 0.0
    assert all(np.isfinite(v) for v in losses.values())


def test_inference_outputs_shapes_and_dtypes(model):
    out = model(inference_inputs(synthetic_batch(num_gt=(1, 1))))
    d, p = 10, SIZE // 4
    expected = {"boxes": ((2, d, 4), tf.float32), "scores": ((2, d), tf.float32),
                "classes": ((2, d), tf.int32), "num_detections": ((2,), tf.int32),
                "masks": ((2, d, p, p), tf.float32)}
    assert {k: (tuple(v.shape), v.dtype) for k, v in out.items()} == expected
    n = out["num_detections"].numpy()
    classes, masks = out["classes"].numpy(), out["masks"].numpy()
    for i in range(2):
        assert ((classes[i, :n[i]] >= 1) & (classes[i, :n[i]] <= 3)).all()
        assert (classes[i, n[i]:] == 0).all() and (masks[i, n[i]:] == 0).all()
    assert ((masks >= 0) & (masks <= 1)).all()


def test_inference_masks_are_cropped_by_the_box_in_prototype_pixels(model):
    out = model(inference_inputs(synthetic_batch(num_gt=(1, 1))))
    boxes, masks = out["boxes"].numpy(), out["masks"].numpy()
    scale = (SIZE // 4) / SIZE
    for i, n in enumerate(out["num_detections"].numpy()):
        for j in range(n):
            x1, y1, x2, y2 = boxes[i, j] * scale
            cols, rows = np.arange(SIZE // 4), np.arange(SIZE // 4)
            in_x = (cols >= max(min(x1, x2) - 1, 0)) & (cols < min(max(x1, x2) + 1, SIZE // 4))
            in_y = (rows >= max(min(y1, y2) - 1, 0)) & (rows < min(max(y1, y2) + 1, SIZE // 4))
            outside = ~(in_y[:, None] & in_x[None, :])
            assert (masks[i, j][outside] == 0).all()


def test_standard_nms_switch(model):
    m = build_model(tiny_config(**{"model.yolact.fast_nms": False}))
    assert m.detection_generator.method == "standard"
    assert model.detection_generator.method == "fast"


# ------------------------------------------------------------------ detect and export (image masks)
CATEGORY_IDS = [11, 22, 33]


@pytest.fixture(scope="module")
def detector():
    """Detections exist with random weights: every anchor enters NMS (score threshold 0)."""
    return build_model(tiny_config(**{"model.yolact.score_threshold": 0.0}),
                       category_ids=CATEGORY_IDS)


def noise_image(height, width, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image[height // 4:height // 2, width // 3:width // 2] = rng.integers(0, 255, 3)
    return image


def test_detect_non_square_image_maps_back_to_the_original(detector):
    image = noise_image(75, 190, 0)
    result = detector.detect([image])[0]
    n = len(result["scores"])
    assert n == 10
    assert result["masks"].shape == (n, 75, 190) and result["masks"].dtype == bool
    boxes = result["boxes"]
    assert boxes.dtype == np.float32 and (boxes == np.trunc(boxes)).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 190).all() and (boxes[:, 3] <= 75).all()
    assert set(result["labels"]) <= set(CATEGORY_IDS)
    # the same as the model's outputs mapped by hand: boxes scaled per axis, clamped,
    # truncated; masks bilinearly resized from prototype resolution, > 0.5
    images, sizes = detector.preprocessor(image[None])
    out = {k: v.numpy() for k, v in detector({"images": images, "image_sizes": sizes}).items()}
    scale = np.array([190 / SIZE, 75 / SIZE] * 2, np.float32)
    raw = out["boxes"][0, :n] * scale
    x1, x2 = np.minimum(raw[:, 0], raw[:, 2]), np.maximum(raw[:, 0], raw[:, 2])
    y1, y2 = np.minimum(raw[:, 1], raw[:, 3]), np.maximum(raw[:, 1], raw[:, 3])
    expected = np.trunc(np.stack([np.maximum(x1, 0), np.maximum(y1, 0), np.minimum(x2, 190),
                                  np.minimum(y2, 75)], 1))
    np.testing.assert_allclose(boxes, expected, atol=1)  # float rounding can cross an integer
    assert np.mean(boxes == expected) > 0.95
    resized = tf.image.resize(np.transpose(out["masks"][0, :n], [1, 2, 0]), (75, 190),
                              method="bilinear", antialias=False).numpy()
    np.testing.assert_array_equal(result["masks"], np.transpose(resized, [2, 0, 1]) > 0.5)


def test_coco_results_drop_zero_area_integer_boxes():
    from keras_maskrcnn.evaluation import detections_to_coco_results
    result = {"boxes": np.array([[1, 2, 5, 9], [3, 3, 3, 8], [0, 4, 7, 4]], np.float32),
              "scores": np.array([0.9, 0.8, 0.7], np.float32), "labels": np.array([1, 2, 3]),
              "masks": np.ones((3, 10, 10), bool)}
    kept = detections_to_coco_results(7, result, drop_empty_boxes=True)
    assert [r["category_id"] for r in kept] == [1] and kept[0]["bbox"] == [1, 2, 4, 7]
    assert len(detections_to_coco_results(7, result)) == 3


def test_export_equals_detect(detector, tmp_path):
    from keras_maskrcnn import export as export_lib
    model_dir = export_lib.export_model(detector, str(tmp_path / "saved"),
                                        include_full_masks=True)
    loaded = tf.saved_model.load(model_dir)
    images = [noise_image(75, 190, 1), noise_image(120, 90, 2)]
    served = loaded.signatures["serving_default"](
        image_bytes=tf.constant([tf.io.encode_png(i).numpy() for i in images]))
    batch = np.stack([images[0], images[0][:, ::-1]])
    served_batch = loaded.signatures["serving_images"](images=tf.constant(batch))
    cases = [(served, b, images[b]) for b in range(2)]
    cases += [(served_batch, b, batch[b]) for b in range(2)]
    for outputs, b, image in cases:
        reference = detector.detect([image])[0]
        one = {k: v.numpy()[b] for k, v in outputs.items()}
        n = int(one["num_detections"])
        h, w = image.shape[:2]
        assert n == len(reference["scores"]) and n > 0
        np.testing.assert_array_equal(one["original_sizes"], (h, w))
        np.testing.assert_array_equal(one["boxes"][:n], reference["boxes"])
        np.testing.assert_allclose(one["scores"][:n], reference["scores"], atol=1e-5)
        np.testing.assert_array_equal(one["classes"][:n], reference["labels"])
        assert one["masks"].shape[1:] == (SIZE // 4, SIZE // 4)
        full = one["full_masks"][:n]
        np.testing.assert_array_equal(full[:, :h, :w], reference["masks"].astype(np.uint8))
        assert not full[:, h:].any() and not full[:, :, w:].any()
        for key in ("boxes", "scores", "classes", "masks", "full_masks"):
            assert not one[key][n:].any(), key
