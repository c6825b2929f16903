"""keras_maskrcnn.ops.anchors against torchvision's AnchorGenerator / ResNet-FPN and loop oracles."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops import anchors as A

SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = (0.5, 1.0, 2.0)


def torchvision_anchors(torch, image_size, feature_sizes, sizes=SIZES, ratios=RATIOS):
    """torchvision AnchorGenerator output (N, 4) for one padded image and dummy feature maps."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    per_level_ratios = ratios if isinstance(ratios[0], (list, tuple)) else (ratios,) * len(sizes)
    generator = AnchorGenerator(sizes, per_level_ratios)
    images = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    features = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    return generator(images, features)[0].numpy()


def grid_oracle(cell, height, width, stride_h, stride_w):
    """Slow loop: anchor (i, j, a) = cell[a] + (j*sw, i*sh, j*sw, i*sh), row-major, anchors minor."""
    out = []
    for i in range(height):
        for j in range(width):
            for a in range(len(cell)):
                out.append(cell[a] + np.array([j * stride_w, i * stride_h, j * stride_w, i * stride_h]))
    return np.array(out, np.float32).reshape(-1, 4)


# ---------------------------------------------------------------- cell anchors


def test_cell_anchors_hand_computed():
    # ratio = h / w; w = 32 / sqrt(r): r=0.5 -> w 45.25, h 22.63 -> half 22.63 / 11.31 -> 23 / 11
    got = A.cell_anchors((32,), RATIOS).numpy()
    np.testing.assert_array_equal(got, [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    # round half to even: half sides 1.5 -> 2, 2.5 -> 2, 3.5 -> 4
    got = A.cell_anchors((3, 5, 7), (1.0,)).numpy()
    np.testing.assert_array_equal(got[:, 2], [2, 2, 4])
    assert got.dtype == np.float32


def test_cell_anchors_match_torchvision_order(torch, torchvision):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes, ratios = (16, 32, 45, 64), (0.25, 0.5, 1.0, 2.0, 3.0)
    ref = AnchorGenerator((sizes,), (ratios,)).cell_anchors[0].numpy()
    got = A.cell_anchors(sizes, ratios).numpy()
    assert got.shape == (20, 4)
    np.testing.assert_array_equal(got, ref)  # ratio-major, size-minor
    swapped = A.cell_anchors(sizes, ratios).numpy().reshape(5, 4, 4).transpose(1, 0, 2).reshape(20, 4)
    assert not np.array_equal(swapped, ref)  # mutation: size-major order is detected


# ---------------------------------------------------------------- grid anchors


def test_grid_anchors_hand_and_oracle():
    cell = np.array([[-1, -2, 1, 2], [-3, -3, 3, 3]], np.float32)
    got = A.grid_anchors(cell, 2, 3, 4, 5).numpy()
    assert got.shape == (2 * 3 * 2, 4)
    np.testing.assert_array_equal(got[:2], cell)  # centre offset 0: first cell at (0, 0)
    np.testing.assert_array_equal(got[2], [4, -2, 6, 2])  # (i=0, j=1, a=0): x shifted by stride_w
    np.testing.assert_array_equal(got[7], [-3, 1, 3, 7])  # (i=1, j=0, a=1): y shifted by stride_h
    np.testing.assert_array_equal(got, grid_oracle(cell, 2, 3, 4, 5))
    assert A.grid_anchors(cell, 0, 3, 4, 5).shape == (0, 4)


def test_grid_anchors_multi_size_level_matches_torchvision(torch, torchvision):
    sizes, ratios = ((32, 64, 128),), ((0.5, 1.0, 2.0),)
    ref = torchvision_anchors(torch, (96, 70), [(12, 9)], sizes, ratios)
    got = A.multilevel_anchors(96, 70, [(12, 9)], sizes, ratios)
    assert len(got) == 1 and got[0].shape == (12 * 9 * 9, 4)
    np.testing.assert_array_equal(got[0].numpy(), ref)  # strides 96 // 12 = 8, 70 // 9 = 7


# ---------------------------------------------------------------- FPN sizes and all levels


def test_fpn_feature_sizes_hand():
    assert A.fpn_feature_sizes(800, 1088) == [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]
    assert A.fpn_feature_sizes(100, 130) == [(25, 33), (13, 17), (7, 9), (4, 5), (2, 3)]
    assert A.fpn_feature_sizes(1, 1, 1, 3) == [(1, 1)] * 3
    assert A.fpn_feature_sizes(33, 65, min_level=3, max_level=3) == [(5, 9)]
    with pytest.raises(ValueError):
        A.fpn_feature_sizes(64, 64, min_level=0)


@pytest.mark.parametrize("size", [(100, 130), (97, 161)])
def test_fpn_feature_sizes_match_resnet_fpn_backbone(torch, torchvision, size):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, *size))
    ref = [tuple(f.shape[-2:]) for f in features.values()]  # '0'..'3', 'pool' = P2..P6
    assert A.fpn_feature_sizes(*size) == ref


@pytest.mark.parametrize(
    "image_size",
    [(800, 1088), (128, 160), (100, 130)],  # padded large, padded small, unpadded odd
)
def test_multilevel_anchors_match_anchor_generator(torch, torchvision, image_size):
    feature_sizes = A.fpn_feature_sizes(*image_size)
    ref = torchvision_anchors(torch, image_size, feature_sizes)
    got = A.multilevel_anchors(*image_size, feature_sizes, SIZES, RATIOS)
    assert [g.shape[0] for g in got] == [h * w * 3 for h, w in feature_sizes]
    got = tf.concat(got, axis=0).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_stride_is_floor_division(torch, torchvision):
    """P6 of an 800-row input has 13 rows: stride 800 // 13 = 61 (not 64), like torchvision."""
    feature_sizes = A.fpn_feature_sizes(800, 1088)
    p6 = A.multilevel_anchors(800, 1088, feature_sizes)[-1].numpy()
    # row 1, col 0, ratio 1: centre (0, 61)
    np.testing.assert_array_equal(p6[17 * 3 + 1], [-256, 61 - 256, 256, 61 + 256])
    # mutation: the "nominal" stride 64 would not match torchvision
    ref = torchvision_anchors(torch, (800, 1088), feature_sizes)[-p6.shape[0]:]
    nominal = A.grid_anchors(A.cell_anchors((512,), RATIOS), 13, 17, 64, 64).numpy()
    assert not np.allclose(nominal, ref, atol=1e-4)
    np.testing.assert_array_equal(p6, ref)
    # the unpadded 100x130 input: P2 is 25x33 so stride_w = 130 // 33 = 3
    p2 = A.multilevel_anchors(100, 130, A.fpn_feature_sizes(100, 130))[0].numpy()
    np.testing.assert_array_equal(p2[3 + 1] - p2[1], [3, 0, 3, 0])


def test_per_level_spec_validation():
    with pytest.raises(ValueError):
        A.multilevel_anchors(64, 64, [(16, 16), (8, 8)], sizes=((32,),))
    flat = A.multilevel_anchors(64, 64, [(4, 4)], sizes=(32,), aspect_ratios=RATIOS)
    nested = A.multilevel_anchors(64, 64, [(4, 4)], sizes=((32,),), aspect_ratios=(RATIOS,))
    np.testing.assert_array_equal(flat[0].numpy(), nested[0].numpy())


# ---------------------------------------------------------------- graph mode


def test_static_shapes_with_python_ints():
    fn = tf.function(lambda: tf.concat(A.multilevel_anchors(128, 160, A.fpn_feature_sizes(128, 160)), 0))
    num_locations = 32 * 40 + 16 * 20 + 8 * 10 + 4 * 5 + 2 * 3  # P2..P6 of 128x160
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [3 * num_locations, 4]


def test_dynamic_sizes_inside_tf_function(torch, torchvision):
    scalar = tf.TensorSpec([], tf.int32)

    @tf.function(input_signature=[scalar, scalar])
    def anchors_for(height, width):
        return tf.concat(A.multilevel_anchors(height, width, A.fpn_feature_sizes(height, width)), 0)

    for size in [(128, 160), (100, 130)]:  # one concrete function serves both sizes
        got = anchors_for(tf.constant(size[0]), tf.constant(size[1])).numpy()
        ref = torchvision_anchors(torch, size, A.fpn_feature_sizes(*size))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    assert len(anchors_for._list_all_concrete_functions()) == 1

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def from_feature_shapes(images):  # feature sizes read from tf.shape of pooled maps
        maps = [tf.nn.max_pool2d(images, 2**lvl, 2**lvl, "SAME") for lvl in (2, 3)]
        shapes = [(tf.shape(m)[1], tf.shape(m)[2]) for m in maps]
        return A.multilevel_anchors(tf.shape(images)[1], tf.shape(images)[2], shapes, SIZES[:2])

    got = from_feature_shapes(tf.zeros([1, 64, 96, 3]))
    ref = torchvision_anchors(torch, (64, 96), [(16, 24), (8, 12)], SIZES[:2])
    np.testing.assert_array_equal(tf.concat(got, 0).numpy(), ref)


# ---------------------------------------------------------------- detectron2 (rounded=False)


def d2_cell_anchors(sizes, ratios):
    """detectron2's DefaultAnchorGenerator.generate_cell_anchors in NumPy: Python float64 maths,
    size-major order, then float32 (torch.tensor of Python floats)."""
    rows = []
    for size in sizes:
        area = size ** 2.0
        for ratio in ratios:
            w = np.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.array(rows, np.float64).astype(np.float32)


def d2_grid_anchors(cell, height, width, stride, offset=0.0):
    """detectron2's _grid_anchors: float32 arange shifts (offset * stride, step stride), row-major
    locations, cell anchors minor."""
    shifts_x = np.arange(offset * stride, width * stride, step=stride, dtype=np.float32)
    shifts_y = np.arange(offset * stride, height * stride, step=stride, dtype=np.float32)
    shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = np.stack([shift_x.ravel(), shift_y.ravel()] * 2, axis=1)  # (H*W, 4) x, y, x, y
    return (shifts[:, None, :] + cell[None]).reshape(-1, 4)


def test_unrounded_fpn_anchors_equal_detectron2_bit_for_bit():
    height, width = 800, 1216  # P6 is 13 x 19: nominal stride 64, torchvision's 61 x 64
    feature_sizes = A.fpn_feature_sizes(height, width)
    strides = [4, 8, 16, 32, 64]
    got = A.multilevel_anchors(height, width, feature_sizes, SIZES, RATIOS, rounded=False,
                               strides=strides)
    for level, ((h, w), sizes, stride) in enumerate(zip(feature_sizes, SIZES, strides)):
        want = d2_grid_anchors(d2_cell_anchors(sizes, RATIOS), h, w, stride)
        np.testing.assert_array_equal(got[level].numpy(), want)  # one size: same order
    # cell anchors really unrounded, and torchvision's floor-division stride differs on P6
    assert not np.array_equal(A.cell_anchors((32,), RATIOS, rounded=False).numpy(),
                              A.cell_anchors((32,), RATIOS).numpy())
    floor_strides = A.multilevel_anchors(height, width, feature_sizes, SIZES, RATIOS,
                                         rounded=False)
    for level in range(4):
        np.testing.assert_array_equal(floor_strides[level].numpy(), got[level].numpy())
    assert not np.array_equal(floor_strides[4].numpy(), got[4].numpy())
    with pytest.raises(ValueError, match="strides"):
        A.multilevel_anchors(height, width, feature_sizes, SIZES, RATIOS, strides=[4, 8])


def test_unrounded_multi_size_level_is_detectron2_reordered_ratio_major():
    """C4: sizes 32..512 on one stride-16 map. detectron2 orders cell anchors size-major, we
    keep ratio-major: anchor (r, s) here is detectron2's (s, r)."""
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    cell = A.cell_anchors(sizes, ratios, rounded=False).numpy()  # (15, 4)
    want = d2_cell_anchors(sizes, ratios)  # (15, 4) size-major
    order = [s * len(ratios) + r for r in range(len(ratios)) for s in range(len(sizes))]
    np.testing.assert_array_equal(cell, want[order])
    got = A.multilevel_anchors(800, 1088, [(50, 68)], [sizes], ratios, rounded=False,
                               strides=[16])[0].numpy().reshape(50 * 68, 15, 4)
    ref = d2_grid_anchors(want, 50, 68, 16).reshape(50 * 68, 15, 4)
    np.testing.assert_array_equal(got, ref[:, order])
