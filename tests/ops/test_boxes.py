"""keras_maskrcnn.ops.boxes against torchvision.ops / BoxCoder and numpy loop oracles."""
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops import boxes as B


def random_boxes(rng, shape, scale=100.0, min_side=0.5):
    """Valid xyxy float32 boxes of shape (*shape, 4) with sides >= min_side."""
    xy = rng.uniform(-0.2 * scale, scale, size=shape + (2,))
    wh = rng.uniform(min_side, 0.6 * scale, size=shape + (2,))
    return np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)


def iou_oracle(b1, b2):
    """Slow loop IoU (N, 4) x (M, 4) -> (N, M); 0 where the union is 0."""
    out = np.zeros((len(b1), len(b2)), np.float64)
    for i, p in enumerate(b1):
        for j, q in enumerate(b2):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            a1 = max(0.0, p[2] - p[0]) * max(0.0, p[3] - p[1])
            a2 = max(0.0, q[2] - q[0]) * max(0.0, q[3] - q[1])
            union = a1 + a2 - iw * ih
            out[i, j] = iw * ih / union if union > 0 else 0.0
    return out


# ---------------------------------------------------------------- area / IoU


def test_area_hand_and_torchvision(torch, torchvision, rng):
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [5, 5, 4, 7], [5, 5, 4, 4]], np.float32)
    # inverted boxes count as 0 (torchvision would give -2 and +1 for the last two)
    np.testing.assert_array_equal(B.area(boxes).numpy(), [6, 0, 0, 0])
    valid = random_boxes(rng, (2, 3, 7))
    ref = torchvision.ops.box_area(torch.from_numpy(valid.reshape(-1, 4))).numpy()
    got = B.area(valid).numpy()
    assert got.shape == (2, 3, 7)
    np.testing.assert_allclose(got.reshape(-1), ref, rtol=1e-6)
    assert B.area(np.zeros((0, 4), np.float32)).shape == (0,)


def test_iou_hand_computed():
    b1 = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float32)
    b2 = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [10, 10, 11, 11]], np.float32)
    expected = [[1 / 7, 1.0, 0.0], [0.0, 0.25, 0.0]]
    np.testing.assert_allclose(B.pairwise_iou(b1, b2).numpy(), expected, rtol=1e-6)


def test_iou_matches_torchvision_and_oracle(torch, torchvision, rng):
    b1, b2 = random_boxes(rng, (13,)), random_boxes(rng, (9,))
    b2[3] = b1[4]  # an exact duplicate (IoU 1) and a shared edge
    b2[5] = [b1[0, 2], b1[0, 1], b1[0, 2] + 5, b1[0, 3]]
    got = B.pairwise_iou(b1, b2).numpy()
    ref = torchvision.ops.box_iou(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, iou_oracle(b1, b2), rtol=1e-5, atol=1e-6)
    assert got[4, 3] == pytest.approx(1.0) and got[0, 5] == 0.0


def test_iou_batched_leading_dims(torch, torchvision, rng):
    b1, b2 = random_boxes(rng, (2, 3, 5)), random_boxes(rng, (2, 3, 4))
    got = B.pairwise_iou(b1, b2).numpy()
    assert got.shape == (2, 3, 5, 4)
    ref = torchvision.ops.box_iou(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    for i in range(2):  # batch elements are independent
        np.testing.assert_allclose(got[i, 1], iou_oracle(b1[i, 1], b2[i, 1]), rtol=1e-5, atol=1e-6)


def test_iou_degenerate_and_empty():
    zero = np.array([[3, 3, 3, 3], [5, 5, 5, 9]], np.float32)  # zero-area boxes
    got = B.pairwise_iou(zero, zero).numpy()
    assert np.all(np.isfinite(got)) and np.all(got == 0.0)  # union 0 -> 0, never NaN
    inverted = np.array([[4, 4, 0, 0]], np.float32)
    normal = np.array([[0, 0, 4, 4]], np.float32)
    assert B.pairwise_iou(inverted, normal).numpy()[0, 0] == 0.0
    assert B.pairwise_iou(np.zeros((0, 4), np.float32), normal).shape == (0, 1)
    assert B.pairwise_iou(normal, np.zeros((0, 4), np.float32)).shape == (1, 0)
    assert B.pairwise_iou(np.zeros((2, 0, 4), np.float32), np.zeros((2, 3, 4), np.float32)).shape == (2, 0, 3)


# ---------------------------------------------------------------- clip / convert / small


def test_clip_matches_torchvision(torch, torchvision, rng):
    boxes = random_boxes(rng, (20,), scale=150.0)
    boxes[0] = [-50, -50, -10, -10]  # fully outside, top-left
    boxes[1] = [200, 300, 250, 400]  # fully outside, bottom-right
    got = B.clip_boxes(boxes, 90, 120).numpy()
    ref = torchvision.ops.clip_boxes_to_image(torch.from_numpy(boxes), (90, 120)).numpy()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(got[1], [120, 90, 120, 90])
    assert B.clip_boxes(np.zeros((0, 4), np.float32), 5, 5).shape == (0, 4)


def test_clip_per_image_sizes(torch, torchvision, rng):
    boxes = random_boxes(rng, (3, 6), scale=150.0)
    heights = np.array([[50], [80], [120]], np.int32)  # (B, 1) broadcast to boxes[..., 0]
    widths = np.array([[60], [100], [30]], np.int32)
    got = B.clip_boxes(boxes, tf.constant(heights), tf.constant(widths)).numpy()
    for i in range(3):
        ref = torchvision.ops.clip_boxes_to_image(
            torch.from_numpy(boxes[i]), (int(heights[i, 0]), int(widths[i, 0]))
        ).numpy()
        np.testing.assert_array_equal(got[i], ref)


def test_xywh_conversion(torch, torchvision, rng):
    xywh = np.array([[10, 20, 30, 40], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(B.xywh_to_xyxy(xywh).numpy(), [[10, 20, 40, 60], [0, 0, 0, 0]])
    boxes = random_boxes(rng, (2, 5))
    got = B.xyxy_to_xywh(boxes).numpy()
    ref = torchvision.ops.box_convert(torch.from_numpy(boxes), "xyxy", "xywh").numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(B.xywh_to_xyxy(got).numpy(), boxes, rtol=1e-6, atol=1e-5)


def test_small_box_mask_matches_remove_small_boxes(torch, torchvision, rng):
    boxes = random_boxes(rng, (30,), scale=10.0, min_side=0.0)
    boxes[0] = [0, 0, 2, 2]  # exactly min_size: kept (>=)
    boxes[1] = [0, 0, 2, 1.999]  # just under on one side: dropped
    boxes[2] = [5, 5, 5, 9]  # zero width
    got = B.small_box_mask(boxes, 2.0).numpy()
    keep = torchvision.ops.remove_small_boxes(torch.from_numpy(boxes), 2.0).numpy()
    np.testing.assert_array_equal(np.nonzero(got)[0], keep)
    assert got[0] and not got[1] and not got[2]
    batched = B.small_box_mask(boxes.reshape(3, 10, 4), 2.0).numpy()
    np.testing.assert_array_equal(batched.reshape(-1), got)


# ---------------------------------------------------------------- encode / decode


WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_encode_matches_box_coder(torch, torchvision, rng, weights):
    from torchvision.models.detection._utils import BoxCoder

    anchors, gt = random_boxes(rng, (50,)), random_boxes(rng, (50,))
    got = B.encode_boxes(gt, anchors, weights).numpy()
    ref = BoxCoder(weights).encode_single(torch.from_numpy(gt), torch.from_numpy(anchors)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # hand case: anchor 10x10 at (5, 5), GT 20x10 shifted by (+5, -2)
    a = np.array([[0, 0, 10, 10]], np.float32)
    g = np.array([[0, -7, 20, 3]], np.float32)
    wx, wy, ww, wh = weights
    expected = [[wx * 0.5, wy * -0.7, ww * math.log(2.0), 0.0]]
    np.testing.assert_allclose(B.encode_boxes(g, a, weights).numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_decode_matches_box_coder(torch, torchvision, rng, weights):
    from torchvision.models.detection._utils import BoxCoder

    anchors = random_boxes(rng, (60,))
    deltas = rng.normal(size=(60, 4)).astype(np.float32) * np.array(weights, np.float32)
    deltas[:5, 2:] = 50.0 * np.array(weights[2:], np.float32)  # exp would overflow without the clamp
    deltas[5:10, 2:] = -30.0  # large negative: not clamped from below
    coder = BoxCoder(weights)
    ref = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy()
    got = B.decode_boxes(deltas, anchors, weights).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    # round trip: decode(encode(gt)) == gt
    gt = random_boxes(rng, (60,))
    back = B.decode_boxes(B.encode_boxes(gt, anchors, weights), anchors, weights).numpy()
    np.testing.assert_allclose(back, gt, rtol=1e-5, atol=1e-3)


def test_decode_class_specific_broadcast_and_batch(torch, torchvision, rng):
    from torchvision.models.detection._utils import BoxCoder

    weights = (10.0, 10.0, 5.0, 5.0)
    rois = random_boxes(rng, (2, 7))  # (B, R, 4)
    deltas = rng.normal(size=(2, 7, 3, 4)).astype(np.float32)  # (B, R, K, 4)
    got = B.decode_boxes(deltas, rois[:, :, None, :], weights).numpy()  # anchors (B, R, 1, 4)
    assert got.shape == (2, 7, 3, 4)
    coder = BoxCoder(weights)
    per_image = [torch.from_numpy(rois[0]), torch.from_numpy(rois[1])]
    ref = coder.decode(torch.from_numpy(deltas.reshape(14, 12)), per_image)  # (B*R, K*4) codes
    np.testing.assert_allclose(got.reshape(14, 3, 4), ref.numpy(), rtol=1e-5, atol=1e-4)


def test_encode_decode_zero_size_and_empty(torch, torchvision):
    from torchvision.models.detection._utils import BoxCoder

    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    gt = np.array([[5, 5, 5, 5], [0, 0, 10, 0]], np.float32)  # zero-size targets
    got = B.encode_boxes(gt, anchors).numpy()
    ref = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors)).numpy()
    np.testing.assert_array_equal(got, ref)  # dw/dh = -inf in both
    assert np.isneginf(got[0, 2]) and np.isneginf(got[1, 3])
    zero_anchor = np.array([[4, 4, 4, 4]], np.float32)  # decodes to a point
    deltas = np.array([[0.3, -0.2, 1.0, 2.0]], np.float32)
    got = B.decode_boxes(deltas, zero_anchor).numpy()
    ref = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(zero_anchor)).numpy()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, [[4, 4, 4, 4]])
    empty = np.zeros((0, 4), np.float32)
    assert B.encode_boxes(empty, empty).shape == (0, 4)
    assert B.decode_boxes(empty, empty).shape == (0, 4)
    assert B.decode_boxes(np.zeros((2, 0, 4), np.float32), np.zeros((2, 0, 4), np.float32)).shape == (2, 0, 4)


def test_mutations_break_the_comparison(torch, torchvision, rng):
    """The torchvision comparison detects a swapped delta order or a missing clamp."""
    from torchvision.models.detection._utils import BoxCoder

    weights = (10.0, 10.0, 5.0, 5.0)
    coder = BoxCoder(weights)
    anchors = random_boxes(rng, (40,))
    gt = random_boxes(rng, (40,))
    ref = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors)).numpy()
    swapped = B.encode_boxes(gt, anchors, weights).numpy()[:, [1, 0, 3, 2]]  # dx<->dy, dw<->dh
    assert not np.allclose(swapped, ref, rtol=1e-5, atol=1e-6)

    deltas = rng.normal(size=(40, 4)).astype(np.float32)
    deltas[:4, 2:] = 30.0  # beyond the clamp
    ref = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy()
    no_clamp = B.decode_boxes(deltas, anchors, weights, clip=float("inf")).numpy()
    assert not np.allclose(no_clamp, ref, rtol=1e-5, atol=1e-4)
    wrong_order = B.decode_boxes(deltas[:, [1, 0, 3, 2]], anchors, weights).numpy()
    assert not np.allclose(wrong_order, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(B.decode_boxes(deltas, anchors, weights).numpy(), ref, rtol=1e-5, atol=1e-4)


def test_ops_under_tf_function_dynamic_shapes(rng):
    spec = tf.TensorSpec([None, None, 4], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([None, 1], tf.int32)])
    def pipeline(deltas, anchors, size):
        boxes = B.clip_boxes(B.decode_boxes(deltas, anchors), size, size)
        keep = B.small_box_mask(boxes, 1e-3)
        return B.pairwise_iou(boxes, anchors), keep, B.encode_boxes(boxes, anchors), B.area(boxes)

    anchors = random_boxes(rng, (2, 8))
    deltas = rng.normal(size=(2, 8, 4)).astype(np.float32) * 0.1
    size = np.array([[64], [96]], np.int32)
    iou, keep, enc, areas = pipeline(deltas, anchors, size)
    eager = B.pairwise_iou(B.clip_boxes(B.decode_boxes(deltas, anchors), size, size), anchors)
    np.testing.assert_allclose(iou.numpy(), eager.numpy(), rtol=1e-6)
    assert iou.shape == (2, 8, 8) and keep.shape == (2, 8)
    assert enc.shape == (2, 8, 4) and areas.shape == (2, 8)
    assert pipeline(deltas[:, :0], anchors[:, :0], size)[0].shape == (2, 0, 0)  # same trace, empty


def test_box_coder_constants_are_torchvisions(torch, torchvision):
    """The named coder constants: torchvision's RPN and box-head weights and its dw/dh clip."""
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.roi_heads import RoIHeads

    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    assert B.RPN_BOX_WEIGHTS == (1.0, 1.0, 1.0, 1.0)  # torchvision's rpn: BoxCoder((1, 1, 1, 1))
    assert B.ROI_BOX_WEIGHTS == (10.0, 10.0, 5.0, 5.0) == tuple(heads.box_coder.weights)
    assert B.DEFAULT_DELTA_CLIP == BoxCoder(B.RPN_BOX_WEIGHTS).bbox_xform_clip
    assert B.DEFAULT_DELTA_CLIP == heads.box_coder.bbox_xform_clip
