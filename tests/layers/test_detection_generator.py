"""DetectionGenerator against torchvision's RoIHeads.postprocess_detections (and hand cases)."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.layers.detection_generator import DetectionGenerator
from keras_maskrcnn.ops.postprocess import generate_detections
from support.layers import assert_config_round_trip

F32 = np.float32
SIZES = np.array([[300, 400], [200, 250], [320, 320]], np.int32)  # (height, width)


# ----------------------------------------------------------------------------- data
def make_case(rng, num_classes, num_rois=40, logit_scale=3.0):
    """B=3 images of different sizes. Image 2 votes background everywhere (no detection).

    RoIs cluster (so NMS suppresses), some stick out of the image (clipping), some are
    invalid with logits that would make them confident detections.
    """
    bsz = len(SIZES)
    centres = rng.uniform(0, 1, (bsz, 4, 2)) * SIZES[:, None, ::-1]
    pick = rng.integers(0, 4, (bsz, num_rois))
    ctr = np.take_along_axis(centres, pick[..., None], 1) + rng.normal(0, 15, (bsz, num_rois, 2))
    wh = rng.uniform(20, 120, (bsz, num_rois, 2))
    rois = np.concatenate([ctr - wh / 2, ctr + wh / 2], -1).astype(F32)
    logits = (rng.normal(0, 1, (bsz, num_rois, num_classes)) * logit_scale).astype(F32)
    logits[2, :, 0] += 30.0  # image 2: background wins everywhere
    deltas = rng.normal(0, 0.5, (bsz, num_rois, num_classes, 4)).astype(F32)
    deltas[0, :3, :, 2:] = 9.0  # above log(1000/16) * 5: exercises scale_clip
    valid = rng.random((bsz, num_rois)) < 0.8
    logits[~valid] = 0.0
    logits[..., 1][~valid] = 40.0  # invalid RoIs would be certain class-1 detections
    return logits, deltas, rois, valid


def tv_postprocess(torch, torchvision, logits, deltas, rois, valid, sizes, score=0.05,
                   nms=0.5, top=100):
    """torchvision's postprocess_detections on the valid RoIs of each image."""
    from torchvision.models.detection.roi_heads import RoIHeads

    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, score, nms, top)
    k = logits.shape[-1]

    def cat(x):  # valid RoIs of all images, concatenated as torchvision takes them
        return torch.from_numpy(np.concatenate([x[b][valid[b]] for b in range(len(x))]))

    boxes, scores, labels = heads.postprocess_detections(
        cat(logits), cat(deltas).reshape(-1, k * 4), [torch.from_numpy(r[v]) for r, v in
                                                        zip(rois, valid)],
        [tuple(int(v) for v in s) for s in sizes])
    return [(b.numpy(), s.numpy(), l.numpy()) for b, s, l in zip(boxes, scores, labels)]


def check_against(reference, out):
    for b, (boxes, scores, labels) in enumerate(reference):
        n = int(out["num_detections"][b])
        assert n == len(scores), (b, n, len(scores))
        np.testing.assert_allclose(out["boxes"][b, :n], boxes, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(out["scores"][b, :n], scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out["classes"][b, :n], labels)
        # padding rows
        assert np.all(out["boxes"][b, n:] == 0) and np.all(out["scores"][b, n:] == 0)
        assert np.all(out["classes"][b, n:] == 0) and np.all(out["roi_index"][b, n:] == -1)


def check_roi_index(out, logits, deltas, rois, valid, sizes):
    """Every detection is its RoI's class-specific decoded, clipped box and softmax score."""
    probs = tf.nn.softmax(logits).numpy()
    for b in range(len(rois)):
        for d in range(int(out["num_detections"][b])):
            r, k = out["roi_index"][b, d], out["classes"][b, d]
            assert valid[b, r]
            np.testing.assert_allclose(out["scores"][b, d], probs[b, r, k], rtol=1e-6)
            dx, dy, dw, dh = deltas[b, r, k] / np.array([10, 10, 5, 5], F32)
            dw, dh = min(dw, math.log(1000 / 16)), min(dh, math.log(1000 / 16))
            x1, y1, x2, y2 = rois[b, r].astype(np.float64)
            cx, cy, w, h = x1 + (x2 - x1) / 2, y1 + (y2 - y1) / 2, x2 - x1, y2 - y1
            cx, cy, w, h = cx + dx * w, cy + dy * h, w * np.exp(dw), h * np.exp(dh)
            box = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0,
                          np.tile(sizes[b, ::-1], 2))
            np.testing.assert_allclose(out["boxes"][b, d], box, rtol=1e-4, atol=1e-3)


def run(layer, logits, deltas, rois, valid, sizes=SIZES):
    return {k: v.numpy() for k, v in layer(logits, deltas, rois, valid, sizes).items()}


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("num_classes", [5, 91])
def test_matches_torchvision(torch, torchvision, rng, num_classes):
    case = make_case(rng, num_classes)
    reference = tv_postprocess(torch, torchvision, *case, SIZES)
    out = run(DetectionGenerator(), *case)
    assert out["boxes"].shape == (3, 100, 4) and out["classes"].dtype == np.int32
    check_against(reference, out)
    assert out["num_detections"][0] > 5 and out["num_detections"][2] == 0  # nothing > 0.05
    check_roi_index(out, *case, SIZES)
    suppressed = sum(len(r[1]) for r in reference)
    assert suppressed < np.sum(tf.nn.softmax(case[0]).numpy()[:2, :, 1:] > 0.05)  # NMS acted


def test_top_k_and_many_candidates(torch, torchvision, rng):
    """> 1000 candidates (torchvision's per-class path) and more than D survivors."""
    logits, deltas, rois, valid = make_case(rng, 91, num_rois=150, logit_scale=0.3)
    logits[:, :, 1:16] += 5.0  # 15 classes at ~0.065 each -> ~1400 candidates per image
    case = (logits, deltas, rois, valid)
    probs = tf.nn.softmax(logits).numpy()[..., 1:]
    assert min((probs[b][valid[b]] > 0.05).sum() for b in range(2)) > 1000
    reference = tv_postprocess(torch, torchvision, *case, SIZES, top=20)
    assert len(reference[0][1]) == 20
    out = run(DetectionGenerator(detections_per_image=20, nms_method="torchvision_cpu"), *case)
    check_against(reference, out)


def test_mutations_are_detected(torch, torchvision, rng):
    case = make_case(rng, 5)
    reference = tv_postprocess(torch, torchvision, *case, SIZES)
    with pytest.raises(AssertionError):  # clip with (width, height) swapped
        check_against(reference, run(DetectionGenerator(), *case, sizes=SIZES[:, ::-1]))
    with pytest.raises(AssertionError):  # RPN box weights
        check_against(reference, run(DetectionGenerator(box_weights=(1, 1, 1, 1)), *case))
    with pytest.raises(AssertionError):  # invalid RoIs taking part
        check_against(reference, run(DetectionGenerator(), *case[:3], np.ones_like(case[3])))
    with pytest.raises(AssertionError):  # a looser NMS
        check_against(reference, run(DetectionGenerator(nms_threshold=0.7), *case))


# ----------------------------------------------------------------------------- hand cases
def test_hand_case():
    """K=2. RoI 0 (0.9) suppresses RoI 1 (IoU 0.6 > 0.5), RoI 2 is clipped, RoI 3 too small
    after clipping, RoI 4 below the threshold, RoI 5 kept (IoU exactly 0.5 is not > 0.5)."""
    rois = np.array([[[0, 0, 10, 10], [0, 0, 10, 6], [45, 45, 60, 60], [49.995, 0, 60, 10],
                      [20, 20, 30, 30], [0, 0, 10, 5]]], F32)
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.04, 0.5], np.float64)
    logits = np.stack([np.zeros(6), np.log(probs / (1 - probs))], -1)[None].astype(F32)
    deltas = np.zeros((1, 6, 2, 4), F32)
    out = run(DetectionGenerator(detections_per_image=4), logits, deltas, rois, np.ones((1, 6)),
              np.array([[50, 50]]))
    assert out["num_detections"][0] == 3
    np.testing.assert_array_equal(out["roi_index"][0], [0, 2, 5, -1])
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.7, 0.5, 0], rtol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, 1], [45, 45, 50, 50])
    np.testing.assert_array_equal(out["classes"][0], [1, 1, 1, 0])


def test_ties_and_class_awareness(torch, torchvision):
    """Equal scores: RoI-major, class-minor order; identical boxes of other classes stay."""
    rois = np.array([[[0, 0, 10, 10], [20, 0, 30, 10]]], F32)
    logits = np.array([[[0, 2, 2, 2], [0, 2, 2, 2]]], F32)  # all six candidates tie
    deltas = np.zeros((1, 2, 4, 4), F32)
    valid = np.ones((1, 2), bool)
    out = run(DetectionGenerator(), logits, deltas, rois, valid, np.array([[50, 50]]))
    np.testing.assert_array_equal(out["roi_index"][0, :7], [0, 0, 0, 1, 1, 1, -1])
    np.testing.assert_array_equal(out["classes"][0, :6], [1, 2, 3, 1, 2, 3])
    check_against(tv_postprocess(torch, torchvision, logits, deltas, rois, valid, [[50, 50]]), out)


def test_class_agnostic_boxes(rng):
    logits, deltas, rois, valid = make_case(rng, 5)
    shared = np.repeat(deltas[:, :, :1], 5, axis=2)  # every class carries the same deltas
    full = run(DetectionGenerator(), logits, shared, rois, valid)
    agnostic = run(DetectionGenerator(class_agnostic_boxes=True), logits, deltas[:, :, :1],
                   rois, valid)
    for k in full:
        np.testing.assert_array_equal(full[k], agnostic[k])
    with pytest.raises(ValueError):
        DetectionGenerator()(logits, deltas[:, :, :1], rois, valid, SIZES)


def test_empty_rois():
    out = run(DetectionGenerator(detections_per_image=5), np.zeros((2, 0, 3), F32),
              np.zeros((2, 0, 3, 4), F32), np.zeros((2, 0, 4), F32), np.zeros((2, 0), bool),
              SIZES[:2])
    assert out["boxes"].shape == (2, 5, 4)
    np.testing.assert_array_equal(out["num_detections"], 0)
    np.testing.assert_array_equal(out["roi_index"], -1)


# ----------------------------------------------------------------------------- keras
def test_tf_function_unknown_rois(rng):
    case = make_case(rng, 5)
    layer = DetectionGenerator(detections_per_image=30)
    spec = [tf.TensorSpec([None, None, 5]), tf.TensorSpec([None, None, 5, 4]),
            tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.bool),
            tf.TensorSpec([None, 2], tf.int32)]
    fn = tf.function(layer, input_signature=spec)
    graph = {k: v.numpy() for k, v in fn(*case, SIZES).items()}
    assert fn.get_concrete_function().structured_outputs["boxes"].shape[1:] == (30, 4)
    eager = run(layer, *case)
    for k in eager:  # grappler may fuse the decode arithmetic: ulp-level differences
        np.testing.assert_allclose(eager[k], graph[k], rtol=1e-6, atol=0)
    fewer = [x[:, :7] for x in case]
    np.testing.assert_array_equal(fn(*fewer, SIZES)["num_detections"].numpy(),
                                  run(layer, *fewer)["num_detections"])


def test_mixed_precision_inputs_stay_float32(rng):
    logits, deltas, rois, valid = make_case(rng, 5)
    layer = DetectionGenerator(dtype="mixed_bfloat16")
    out = layer(tf.cast(logits, tf.bfloat16), deltas, rois, valid, SIZES)
    assert out["boxes"].dtype == tf.float32 and out["scores"].dtype == tf.float32
    ref = run(DetectionGenerator(), tf.cast(tf.cast(logits, tf.bfloat16), tf.float32).numpy(),
              deltas, rois, valid)
    np.testing.assert_array_equal(out["boxes"].numpy(), ref["boxes"])  # rois not rounded


def test_get_config_round_trip_and_symbolic_call():
    layer = DetectionGenerator(0.1, 0.6, 50, 0.5, (1, 2, 3, 4), 3.0, True, "per_class",
                               name="det")
    restored = assert_config_round_trip(layer)
    assert restored.box_weights == (1.0, 2.0, 3.0, 4.0)
    out = layer(keras.Input((None, 7)), keras.Input((None, 1, 4)), keras.Input((None, 4)),
                keras.Input((None,), dtype="bool"), keras.Input((2,), dtype="int32"))
    assert tuple(out["boxes"].shape) == (None, 50, 4) and out["classes"].dtype == "int32"
    with pytest.raises(ValueError):
        DetectionGenerator(nms_method="fast")
    with pytest.raises(ValueError):  # K >= 2 classes (background + one)
        generate_detections(tf.zeros([1, 2, 3])[..., :0], tf.zeros([1, 2, 3, 4]),
                            tf.zeros([1, 2, 4]), tf.ones([1, 2], bool), [[5, 5]])


def test_keras_file_round_trip(rng, tmp_path):
    case = make_case(rng, 5)
    inputs = [keras.Input((None, 5)), keras.Input((None, 5, 4)), keras.Input((None, 4)),
              keras.Input((None,), dtype="bool"), keras.Input((2,), dtype="int32")]
    model = keras.Model(inputs, DetectionGenerator(detections_per_image=10)(*inputs))
    model.save(tmp_path / "detections.keras")
    loaded = keras.saving.load_model(tmp_path / "detections.keras")
    first, again = model([*case, SIZES]), loaded([*case, SIZES])
    for k in first:
        np.testing.assert_array_equal(first[k].numpy(), again[k].numpy())
