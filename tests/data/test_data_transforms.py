"""keras_maskrcnn.data.transforms: resize / flip / pad against torchvision and numpy oracles."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.data import transforms as T
from keras_maskrcnn.preprocessing import padded_size


def _random_example(rng, height, width, num=3, num_kp=4):
    """Image, rectangle masks with their exact boxes, keypoints inside the boxes."""
    image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    masks = np.zeros((num, height, width), np.uint8)
    boxes = np.zeros((num, 4), np.float32)
    for i in range(num):
        x1, x2 = sorted(rng.choice(width + 1, 2, replace=False))
        y1, y2 = sorted(rng.choice(height + 1, 2, replace=False))
        masks[i, y1:y2, x1:x2] = 1
        boxes[i] = x1, y1, x2, y2
    kp = np.zeros((num, num_kp, 3), np.float32)
    kp[..., 0] = rng.uniform(boxes[:, None, 0], boxes[:, None, 2], (num, num_kp))
    kp[..., 1] = rng.uniform(boxes[:, None, 1], boxes[:, None, 3], (num, num_kp))
    kp[..., 2] = rng.integers(0, 3, (num, num_kp))
    kp[kp[..., 2] == 0] = 0  # COCO: unlabelled keypoints are (0, 0, 0)
    return {"image": image, "boxes": boxes, "masks": masks, "keypoints": kp}


def _mask_boxes(masks):
    """xyxy box of each non-empty mask (pixel-corner convention: x2 = last column + 1)."""
    out = []
    for m in np.asarray(masks):
        ys, xs = np.nonzero(m)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0] * 4)
    return np.array(out, np.float32)


# ----------------------------------------------------------------------------- resize
@pytest.mark.parametrize("shape,min_size,max_size", [((37, 53), 64, 100), ((96, 64), 48, 80),
                                                      ((60, 200), 100, 160)])
def test_resize_example_matches_torchvision(torch, torchvision, rng, shape, min_size, max_size):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    ex = _random_example(rng, *shape)
    tv = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
    target = {"boxes": torch.from_numpy(ex["boxes"]), "masks": torch.from_numpy(ex["masks"]),
              "keypoints": torch.from_numpy(ex["keypoints"])}
    image = torch.from_numpy(ex["image"]).permute(2, 0, 1).float()
    tv_image, tv_target = tv.resize(image, target)
    out = T.resize_example(ex, min_size, max_size, mask_method="torchvision")
    np.testing.assert_allclose(out["image"].numpy(), tv_image.permute(1, 2, 0).numpy(),
                               atol=2e-3)
    np.testing.assert_allclose(out["boxes"].numpy(), tv_target["boxes"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["keypoints"].numpy(), tv_target["keypoints"].numpy(),
                               rtol=1e-6)
    np.testing.assert_array_equal(out["masks"].numpy(), tv_target["masks"].numpy())
    # Mutation: scaling boxes by the nominal factor instead of the per-axis ratio differs.
    if not np.allclose(np.array(out["image"].shape[:2]) / shape, float(out["scale"])):
        nominal = ex["boxes"] * float(out["scale"])
        assert not np.allclose(nominal, tv_target["boxes"].numpy(), rtol=1e-6)


@pytest.mark.parametrize("method,torch_mode", [("nearest", "nearest-exact"),
                                               ("torchvision", "nearest")])
def test_resize_masks_nearest_modes(torch, rng, method, torch_mode):
    masks = (rng.uniform(size=(3, 23, 31)) > 0.5).astype(np.uint8)
    for size in [(46, 62), (11, 15), (30, 17)]:
        ours = T.resize_masks(masks, size, method).numpy()
        ref = torch.nn.functional.interpolate(torch.from_numpy(masks)[:, None].float(), size=size,
                                              mode=torch_mode)[:, 0].byte().numpy()
        np.testing.assert_array_equal(ours, ref)
    # Mutation: the two nearest conventions really differ (so each test pins its own).
    other = "torchvision" if method == "nearest" else "nearest"
    assert not np.array_equal(T.resize_masks(masks, (11, 15), other).numpy(),
                              T.resize_masks(masks, (11, 15), method).numpy())


def test_resize_masks_bilinear_threshold(torch, rng):
    masks = (rng.uniform(size=(2, 40, 24)) > 0.3).astype(np.uint8)
    ours = T.resize_masks(masks, (17, 33), "bilinear").numpy()
    ref = torch.nn.functional.interpolate(torch.from_numpy(masks)[:, None].float(), size=(17, 33),
                                          mode="bilinear", align_corners=False)[:, 0] >= 0.5
    np.testing.assert_array_equal(ours, ref.numpy().astype(np.uint8))
    with pytest.raises(ValueError, match="mask resize method"):
        T.resize_masks(masks, (5, 5), "area")


def test_resize_empty_instances():
    ex = {"image": np.zeros((30, 40, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
          "masks": np.zeros((0, 30, 40), np.uint8), "keypoints": np.zeros((0, 4, 3), np.float32)}
    out = T.resize_example(ex, 60, 100)
    assert out["image"].shape == (60, 80, 3)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 60, 80)
    assert out["keypoints"].shape == (0, 4, 3)


# ----------------------------------------------------------------------------- flip
def _reference_flip_keypoints(kps, width, flip_indices):
    """torchvision references/detection/transforms.py _flip_coco_person_keypoints."""
    flipped = kps[:, flip_indices].copy()
    flipped[..., 0] = width - flipped[..., 0]
    flipped[flipped[..., 2] == 0] = 0
    return flipped


def test_flip_hand_case():
    boxes = np.array([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]], np.float32)
    np.testing.assert_allclose(T.flip_boxes(boxes, 100).numpy(),
                               [[70, 5, 90, 25], [0, 0, 100, 50]])
    kps = np.array([[[10, 1, 2], [20, 2, 1], [0, 0, 0], [40, 4, 2]]], np.float32)
    out = T.flip_keypoints(kps, 100, (0, 3, 2, 1)).numpy()
    np.testing.assert_allclose(out, [[[90, 1, 2], [60, 4, 2], [0, 0, 0], [80, 2, 1]]])


def test_flip_keypoints_matches_reference(rng):
    kps = _random_example(rng, 50, 70, num=5, num_kp=17)["keypoints"]
    flip = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    np.testing.assert_allclose(T.flip_keypoints(kps, 70, flip).numpy(),
                               _reference_flip_keypoints(kps, 70, list(flip)))


def test_flip_twice_is_identity(rng):
    ex = _random_example(rng, 41, 57)
    twice = T.flip_example(T.flip_example(ex, (0, 3, 2, 1)), (0, 3, 2, 1))
    for key in ("image", "boxes", "masks", "keypoints"):
        np.testing.assert_allclose(np.asarray(twice[key]), ex[key], atol=1e-5, err_msg=key)
    once = T.flip_example(ex, (0, 3, 2, 1))
    assert not np.array_equal(once["image"].numpy(), ex["image"])


def test_flip_keeps_masks_and_boxes_consistent(rng):
    ex = _random_example(rng, 33, 47, num=6)
    out = T.flip_example(ex)
    np.testing.assert_allclose(_mask_boxes(out["masks"]), out["boxes"].numpy())
    # Mutation: a "w - 1 - x" flip (pixel-index convention) is off by one against the mask.
    x1, y1, x2, y2 = ex["boxes"].T
    wrong = np.stack([47 - 1 - x2, y1, 47 - 1 - x1, y2], axis=1)
    assert not np.allclose(_mask_boxes(out["masks"]), wrong)


def test_random_flip_is_stateless_and_follows_probability(rng):
    ex = _random_example(rng, 20, 30)
    flips = []
    for i in range(40):
        out = T.random_flip_example(ex, tf.constant([i, 7]), 0.5)
        flips.append(not np.array_equal(out["image"].numpy(), ex["image"]))
        again = T.random_flip_example(ex, tf.constant([i, 7]), 0.5)
        np.testing.assert_array_equal(out["boxes"].numpy(), again["boxes"].numpy())
    assert 5 < sum(flips) < 35
    never = T.random_flip_example(ex, tf.constant([1, 2]), 0.0)
    np.testing.assert_array_equal(never["image"].numpy(), ex["image"])


# ----------------------------------------------------------------------------- consistency
@pytest.mark.parametrize("method", ["nearest", "torchvision", "bilinear"])
def test_resize_then_flip_keeps_mask_box_within_one_pixel(rng, method):
    for shape, lo, hi in [((57, 83), 100, 160), ((120, 90), 64, 100), ((64, 64), 200, 200)]:
        ex = _random_example(rng, *shape, num=6)
        ex["masks"][:, :, :] = 0  # rebuild masks from boxes with a minimum size of 4 px
        for i, (x1, y1, x2, y2) in enumerate(ex["boxes"].astype(int)):
            ex["masks"][i, y1:max(y2, y1 + 4), x1:max(x2, x1 + 4)] = 1
        ex["boxes"] = _mask_boxes(ex["masks"])
        out = T.flip_example(T.resize_example(ex, lo, hi, method))
        err = np.abs(_mask_boxes(out["masks"]) - out["boxes"].numpy())
        assert err.max() <= 1.0, (method, shape, err.max())


# ----------------------------------------------------------------------------- padding
def test_padding_helpers():
    image = tf.ones((5, 7, 3))
    padded = T.pad_image(image, 8, 12).numpy()
    assert padded.shape == (8, 12, 3) and padded[:5, :7].min() == 1
    assert padded[5:].max() == 0 and padded[:, 7:].max() == 0
    masks = T.pad_masks(tf.ones((2, 5, 7), tf.uint8), 8, 12).numpy()
    assert masks.shape == (2, 8, 12) and masks.sum() == 70


def test_pad_instances():
    boxes = tf.constant([[1.0, 2, 3, 4], [5, 6, 7, 8]])
    out = T.pad_instances(boxes, 4)
    np.testing.assert_array_equal(out.numpy()[2:], -1)
    np.testing.assert_array_equal(out.numpy()[:2], boxes.numpy())
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(T.pad_instances(boxes, 1).numpy(), boxes.numpy()[:1])
    classes = T.pad_instances(tf.zeros((0,), tf.int32), 3)
    np.testing.assert_array_equal(classes.numpy(), [-1, -1, -1])
    masks = T.pad_instances(tf.ones((1, 2, 2), tf.uint8), 3, 0)
    assert masks.dtype == tf.uint8 and masks.numpy().sum() == 4 and masks.shape[0] == 3


def test_limit_instances_truncates_and_keeps_one_row():
    boxes = tf.constant([[1.0, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
    np.testing.assert_array_equal(T.limit_instances(boxes, 2).numpy(), boxes.numpy()[:2])
    np.testing.assert_array_equal(T.limit_instances(boxes, 5).numpy(), boxes.numpy())
    none = T.limit_instances(tf.zeros((0, 2, 2), tf.uint8), 5, 0)  # no instance: one pad row
    assert none.shape == (1, 2, 2) and none.dtype == tf.uint8 and not none.numpy().any()
    np.testing.assert_array_equal(T.limit_instances(tf.zeros((0,), tf.int32), 5).numpy(), [-1])


def test_sample_min_size():
    seeds = [tf.constant([i, 0]) for i in range(60)]
    choice = {int(T.sample_min_size(s, (640, 672, 704), "choice")) for s in seeds}
    assert choice == {640, 672, 704}
    ranged = [int(T.sample_min_size(s, (10, 12), "range")) for s in seeds]
    assert set(ranged) == {10, 11, 12}  # both ends inclusive (detectron2's randint(lo, hi + 1))
    assert int(T.sample_min_size(seeds[3], (10, 12), "range")) == ranged[3]
    with pytest.raises(ValueError, match="sampling"):
        T.sample_min_size(seeds[0], (1,), "uniform")


def test_transforms_run_in_tf_function(rng):
    ex = _random_example(rng, 45, 61)
    spec = {"image": tf.TensorSpec([None, None, 3], tf.uint8),
            "boxes": tf.TensorSpec([None, 4], tf.float32),
            "masks": tf.TensorSpec([None, None, None], tf.uint8),
            "keypoints": tf.TensorSpec([None, 4, 3], tf.float32)}

    @tf.function(input_signature=[spec, tf.TensorSpec([2], tf.int32)])
    def run(example, seed):
        out = T.resize_example(example, 90, 150)
        out = T.random_flip_example(out, seed, 0.5, (0, 3, 2, 1))
        h, w = padded_size(tf.shape(out["image"])[0], tf.shape(out["image"])[1], 32)
        return T.pad_image(out["image"], h, w), T.pad_instances(out["boxes"], 5)

    image, boxes = run(ex, tf.constant([1, 2]))
    eager = T.random_flip_example(T.resize_example(ex, 90, 150), tf.constant([1, 2]), 0.5,
                                  (0, 3, 2, 1))
    assert image.shape == (96, 128, 3)
    np.testing.assert_allclose(boxes.numpy()[:3], eager["boxes"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(image.numpy()[:90, :122], eager["image"].numpy(), atol=1e-4)
