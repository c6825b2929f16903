"""Prototype mask assembly, crop and resizes against NumPy definitions and torch."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops import prototype_masks as pm


def crop_oracle(masks, boxes, padding=1):
    """The reference's crop as loops: masks (D, H, W), boxes (D, 4) in mask pixels."""
    out = np.zeros_like(masks)
    d, h, w = masks.shape
    for n in range(d):
        xa, ya, xb, yb = boxes[n]
        x1, x2 = max(min(xa, xb) - padding, 0), min(max(xa, xb) + padding, w)
        y1, y2 = max(min(ya, yb) - padding, 0), min(max(ya, yb) + padding, h)
        for r in range(h):
            for c in range(w):
                if x1 <= c < x2 and y1 <= r < y2:
                    out[n, r, c] = masks[n, r, c]
    return out


def bilinear_oracle(image, out_h, out_w):
    """Half-pixel bilinear without antialias (torch align_corners=False), one (h, w) map."""
    h, w = image.shape

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, ly = axis(h, out_h)
    x0, x1, lx = axis(w, out_w)
    top = image[y0][:, x0] * (1 - lx) + image[y0][:, x1] * lx
    bottom = image[y1][:, x0] * (1 - lx) + image[y1][:, x1] * lx
    return top * (1 - ly[:, None]) + bottom * ly[:, None]


def random_masks(rng, shape):
    """Blobby 0/1 masks: thresholded smooth noise."""
    noise = rng.normal(size=shape)
    for axis in (-1, -2):
        noise = sum(np.roll(noise, s, axis) for s in range(-3, 4))
    return (noise > 0.5).astype(np.uint8)


def test_assemble_masks_definition(rng):
    protos = rng.normal(size=(2, 7, 9, 4)).astype(np.float32)
    coefs = rng.normal(size=(2, 3, 4)).astype(np.float32)
    logits = pm.assemble_mask_logits(protos, coefs).numpy()
    want = np.stack([protos[b] @ coefs[b].T for b in range(2)]).transpose(0, 3, 1, 2)
    assert logits.shape == (2, 3, 7, 9)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pm.assemble_masks(protos, coefs).numpy(), 1 / (1 + np.exp(-want)),
                               rtol=1e-5, atol=1e-6)


def test_crop_hand_case():
    masks = np.ones((1, 6, 8), np.float32)
    got = pm.crop_masks(masks, [[2.0, 1.5, 4.0, 3.0]]).numpy()[0]
    # columns 1 <= c < 5, rows 0.5 <= r < 4 -> rows 1..3
    want = np.zeros((6, 8), np.float32)
    want[1:4, 1:5] = 1
    np.testing.assert_array_equal(got, want)


def test_crop_random_boxes_against_loops(rng):
    masks = rng.uniform(size=(2, 5, 11, 13)).astype(np.float32)
    boxes = rng.uniform(-3, 16, (2, 5, 4)).astype(np.float32)
    boxes[0, 0] = [2, 3, 7, 9]  # integer edges
    boxes[0, 1] = [9.5, 8.25, 1.5, 0.75]  # reversed corners
    boxes[0, 2] = [-5, -5, 40, 40]  # larger than the mask
    got = pm.crop_masks(masks, boxes).numpy()
    for b in range(2):
        np.testing.assert_array_equal(got[b], crop_oracle(masks[b], boxes[b]))
    got0 = pm.crop_masks(masks[0], boxes[0], padding=0).numpy()
    np.testing.assert_array_equal(got0, crop_oracle(masks[0], boxes[0], padding=0))


def _check_resize(got_float, source, out_h, out_w):
    want = np.stack([bilinear_oracle(m.astype(np.float64), out_h, out_w) for m in source])
    np.testing.assert_allclose(got_float, want, atol=1e-5)


def test_downsample_gt_masks_definition_and_torch(rng, torch):
    masks = random_masks(rng, (2, 3, 55, 41))
    got = pm.downsample_gt_masks(masks, (14, 11)).numpy()
    assert got.shape == (2, 3, 14, 11) and got.dtype == np.float32
    _check_resize(pm._resize_channels(masks[0], (14, 11)).numpy(), masks[0], 14, 11)
    ref = torch.nn.functional.interpolate(torch.tensor(masks, dtype=torch.float32), (14, 11),
                                          mode="bilinear", align_corners=False)
    ref = ref.numpy()
    decided = np.abs(ref - 0.5) > 1e-5  # exact 0.5 ties could round either way
    np.testing.assert_array_equal(got[decided], (ref > 0.5).astype(np.float32)[decided])
    # unbatched (M, H, W)
    np.testing.assert_array_equal(pm.downsample_gt_masks(masks[1], (14, 11)).numpy(), got[1])


def test_masks_to_image_upsamples_and_thresholds(rng, torch):
    probs = rng.uniform(size=(4, 9, 7)).astype(np.float32)
    got = pm.masks_to_image(probs, (40, 23)).numpy()
    assert got.dtype == bool and got.shape == (4, 40, 23)
    _check_resize(pm._resize_channels(probs, (40, 23)).numpy(), probs, 40, 23)
    ref = torch.nn.functional.interpolate(torch.tensor(probs)[None], (40, 23), mode="bilinear",
                                          align_corners=False)[0].numpy()
    decided = np.abs(ref - 0.5) > 1e-5
    np.testing.assert_array_equal(got[decided], (ref > 0.5)[decided])
    batched = pm.masks_to_image(np.stack([probs, probs[::-1]]), (40, 23)).numpy()
    np.testing.assert_array_equal(batched[0], got)
    np.testing.assert_array_equal(batched[1], got[::-1])


def test_no_masks_and_graph_mode():
    out = pm.masks_to_image(np.zeros((0, 9, 7), np.float32), (20, 10))
    assert out.shape == (0, 20, 10)
    fn = tf.function(lambda m, b: pm.crop_masks(m, b),
                     input_signature=[tf.TensorSpec([None, None, None]), tf.TensorSpec([None, 4])])
    np.testing.assert_array_equal(fn(np.ones((1, 3, 3), np.float32), [[0.0, 0.0, 0.5, 0.5]]),
                                  [[[1, 1, 0], [1, 1, 0], [0, 0, 0]]])


def test_bad_rank():
    with pytest.raises(ValueError):
        pm.masks_to_image(np.zeros((5, 5), np.float32), (3, 3))
