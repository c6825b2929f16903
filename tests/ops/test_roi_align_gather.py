"""ops.roi_align_gather (the portable FPN RoIAlign of the ONNX / LiteRT exports) against
torchvision.ops.roi_align on each RoI's level and against ops.roi_align.multilevel_roi_align."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops.roi_align import fpn_levels, multilevel_roi_align
from keras_maskrcnn.ops.roi_align_gather import multilevel_roi_align_gather

HEIGHT, WIDTH = 256, 320


def _pyramid(rng, batch, channels=3):
    return {f"P{level}": rng.standard_normal(
        (batch, HEIGHT // 2**level, WIDTH // 2**level, channels)).astype(np.float32)
        for level in range(2, 6)}


def _boxes(rng, batch, num):
    """Sides 1..700 px (every level), centres anywhere incl. partly outside, plus a zero-size,
    a huge and a fully outside box per image."""
    sides = np.exp(rng.uniform(0.0, np.log(700.0), size=(batch, num, 2)))
    centres = rng.uniform(-20.0, [WIDTH + 20.0, HEIGHT + 20.0], size=(batch, num, 2))
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], -1)
    special = np.array([[50, 60, 50, 60], [-2000, -2000, 3000, 3000], [900, 900, 990, 950]])
    return np.concatenate([boxes, np.broadcast_to(special, (batch, 3, 4))], 1).astype(np.float32)


def _torchvision(torch, torchvision, feats, boxes, levels, out, grid, aligned):
    """torchvision.ops.roi_align of each RoI on its level -> (B, R, P, Q, C)."""
    b, r = boxes.shape[:2]
    result = np.zeros((b, r) + out + (feats["P2"].shape[-1],), np.float32)
    for i in range(b):
        for j in range(r):
            level = int(levels[i, j])
            nchw = torch.from_numpy(feats[f"P{level}"][i:i + 1]).permute(0, 3, 1, 2)
            roi = torch.from_numpy(np.concatenate([[0.0], boxes[i, j]]).astype(np.float32))
            pooled = torchvision.ops.roi_align(nchw, roi[None], out, 0.5**level, grid, aligned)
            result[i, j] = pooled[0].permute(1, 2, 0).numpy()
    return result


@pytest.mark.parametrize("aligned,grid,mapping", [(False, 2, "torchvision"),
                                                  (True, 1, "detectron2"),
                                                  (True, 3, "torchvision")])
def test_matches_torchvision_roi_align_on_each_level(torch, torchvision, rng, aligned, grid,
                                                     mapping):
    feats, boxes = _pyramid(rng, 2), _boxes(rng, 2, 30)
    levels = fpn_levels(boxes, mapping).numpy()
    assert set(levels.ravel()) == {2, 3, 4, 5}
    got = multilevel_roi_align_gather(feats, boxes, (7, 6), grid, aligned,
                                      level_mapping=mapping).numpy()
    expected = _torchvision(torch, torchvision, feats, boxes, levels, (7, 6), grid, aligned)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_equals_the_crop_and_resize_path_in_a_graph_with_unknown_sizes(rng):
    feats, boxes = _pyramid(rng, 1, 8), _boxes(rng, 1, 50)
    spec = {k: tf.TensorSpec([1, None, None, 8]) for k in feats}

    @tf.function(input_signature=[spec, tf.TensorSpec([1, None, 4])])
    def both(f, b):
        return (multilevel_roi_align_gather(f, b, 14, 2, False),
                multilevel_roi_align(f, b, 14, 2, False))

    ops = {op.type for op in both.get_concrete_function().graph.get_operations()}
    got, reference = both(feats, boxes)
    assert got.shape == (1, 53, 14, 14, 8)
    # the crop_and_resize path is within 1e-4 of torchvision (tests/ops/test_roi_align.py)
    np.testing.assert_allclose(got.numpy(), reference.numpy(), atol=1e-4)
    assert "CropAndResize" in ops  # the reference path ...
    gather_ops = {op.type for op in tf.function(
        lambda f, b: multilevel_roi_align_gather(f, b, 14, 2, False),
        input_signature=[spec, tf.TensorSpec([1, None, 4])]).get_concrete_function()
        .graph.get_operations()}
    assert not gather_ops & {"CropAndResize", "DynamicPartition", "DynamicStitch"}  # ... not here


def test_single_level_c4_and_empty_rois(rng):
    c4 = {"P4": rng.standard_normal((2, 16, 20, 4)).astype(np.float32)}
    boxes = _boxes(rng, 2, 5)
    got = multilevel_roi_align_gather(c4, boxes, 14, 2, True, min_level=4, max_level=4)
    reference = multilevel_roi_align(c4, boxes, 14, 2, True, min_level=4, max_level=4)
    np.testing.assert_allclose(got.numpy(), reference.numpy(), atol=1e-4)
    empty = multilevel_roi_align_gather(c4, np.zeros((2, 0, 4), np.float32), 7, 2, True,
                                        min_level=4, max_level=4)
    assert empty.shape == (2, 0, 7, 7, 4)


def test_adaptive_sampling_is_refused(rng):
    with pytest.raises(ValueError, match="fixed sampling_ratio"):
        multilevel_roi_align_gather(_pyramid(rng, 1), _boxes(rng, 1, 2), 7, 0, True)
