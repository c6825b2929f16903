"""YOLACT losses against a NumPy transcription of the reference's MultiBoxLoss
(yolact_base_config: conf_alpha 1, bbox_alpha 1.5, mask_alpha 6.125, semantic alpha 1,
masks_to_train 100, OHEM 3:1, crop with padding 1, loss normalised by the GT box area)."""
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import losses
from keras_maskrcnn.losses.yolact import select_mask_anchors
from keras_maskrcnn.ops.anchors import yolact_anchors
from keras_maskrcnn.ops.dense_matching import match_anchors

IMAGE = 64
HP = 16  # prototype size
HS = 8  # segmentation size
K = 5  # classes with background


# ----------------------------------------------------------------------------- oracle


def bilinear(image, out_h, out_w):
    """Half-pixel bilinear without antialias (torch align_corners=False) of one map."""
    h, w = image.shape

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    y0, y1, ly = axis(h, out_h)
    x0, x1, lx = axis(w, out_w)
    top = image[y0][:, x0] * (1 - lx) + image[y0][:, x1] * lx
    bottom = image[y1][:, x0] * (1 - lx) + image[y1][:, x1] * lx
    return top * (1 - ly[:, None]) + bottom * ly[:, None]


def downsample(masks, h, w):
    return np.stack([bilinear(m.astype(np.float64), h, w) for m in masks]) > 0.5


def log_sum_exp(x):
    x_max = x.max()
    return np.log(np.exp(x - x_max).sum(1)) + x_max


def bce(p, t):
    with np.errstate(divide="ignore"):
        return -(t * np.maximum(np.log(p), -100) + (1 - t) * np.maximum(np.log(1 - p), -100))


def ohem_conf_loss(conf_data, conf_t, pos, num, num_classes):
    batch_conf = conf_data.reshape(-1, num_classes)
    loss_c = (log_sum_exp(batch_conf) - batch_conf[:, 0]).reshape(num, -1)
    loss_c[pos] = 0
    loss_c[conf_t < 0] = 0
    loss_idx = np.argsort(-loss_c, axis=1, kind="stable")
    idx_rank = np.argsort(loss_idx, axis=1, kind="stable")
    num_neg = np.minimum(3 * pos.sum(1, keepdims=True), pos.shape[1] - 1)
    neg = idx_rank < num_neg
    neg[pos] = False
    neg[conf_t < 0] = False
    sel = pos | neg
    conf_p = conf_data[sel]
    target = conf_t[sel]
    return np.sum(log_sum_exp(conf_p) - conf_p[np.arange(len(target)), target])


def crop(masks, boxes, padding=1):
    """masks (h, w, n), boxes relative (n, 4), the reference's crop."""
    h, w, _ = masks.shape
    x1 = np.maximum(np.minimum(boxes[:, 0] * w, boxes[:, 2] * w) - padding, 0)
    x2 = np.minimum(np.maximum(boxes[:, 0] * w, boxes[:, 2] * w) + padding, w)
    y1 = np.maximum(np.minimum(boxes[:, 1] * h, boxes[:, 3] * h) - padding, 0)
    y2 = np.minimum(np.maximum(boxes[:, 1] * h, boxes[:, 3] * h) + padding, h)
    rows = np.arange(w)[None, :, None]
    cols = np.arange(h)[:, None, None]
    keep = (rows >= x1) & (rows < x2) & (cols >= y1) & (cols < y2)
    return masks * keep


def reference_losses(p, subsets=None, masks_to_train=100):
    """MultiBoxLoss.forward in float64, per image lists like the reference."""
    conf_t, idx_t, loc_t = p["labels"], p["matched"], p["box_targets"]
    batch = conf_t.shape[0]
    pos = conf_t > 0
    total_num_pos = pos.sum()
    out = {"B": np.sum(smooth_l1(p["deltas"][pos] - loc_t[pos])) * 1.5}
    loss_m = 0.0
    for idx in range(batch):
        down = downsample(p["masks"][idx], HP, HP).transpose(1, 2, 0).astype(np.float64)
        cur_pos = np.flatnonzero(pos[idx])
        if len(cur_pos) == 0:
            continue
        old_num_pos = len(cur_pos)
        if old_num_pos > masks_to_train:
            cur_pos = np.asarray(sorted(subsets[idx]))
        pos_idx_t = idx_t[idx, cur_pos]
        gt_box = p["boxes"][idx][pos_idx_t] / IMAGE  # relative point form
        coef = p["coefs"][idx, cur_pos]
        pred = 1 / (1 + np.exp(-(p["protos"][idx] @ coef.T)))
        pred = crop(pred, gt_box)
        pre = bce(np.clip(pred, 0, 1), down[:, :, pos_idx_t])
        width = (gt_box[:, 2] - gt_box[:, 0]) * HP
        height = (gt_box[:, 3] - gt_box[:, 1]) * HP
        pre = pre.sum(axis=(0, 1)) / width / height * HP * HP
        if old_num_pos > len(cur_pos):
            pre *= old_num_pos / len(cur_pos)
        loss_m += pre.sum()
    out["M"] = loss_m * 6.125 / HP / HP
    out["C"] = ohem_conf_loss(p["logits"], conf_t, pos, batch, K)
    loss_s = 0.0
    for idx in range(batch):
        segment = p["segm"][idx].transpose(2, 0, 1)  # NCHW as the reference
        keep = (p["classes"][idx] > 0) & ~p["crowd"][idx]
        down = downsample(p["masks"][idx][keep], HS, HS)
        segment_t = np.zeros_like(segment)
        for obj, cls in enumerate(p["classes"][idx][keep] - 1):
            segment_t[cls] = np.maximum(segment_t[cls], down[obj])
        loss_s += np.sum(np.maximum(segment, 0) - segment * segment_t
                         + np.log1p(np.exp(-np.abs(segment))))
    out["S"] = loss_s / HS / HS
    for key in out:
        out[key] = out[key] / (batch if key == "S" else total_num_pos)
    return out


def smooth_l1(x):
    n = np.abs(x)
    return np.where(n < 1, 0.5 * n * n, n - 0.5)


# ----------------------------------------------------------------------------- problems


def blob_mask(rng, box):
    """A 0/1 ellipse (IMAGE x IMAGE) that may spill out of its box (as COCO polygons can)."""
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[:IMAGE, :IMAGE] + 0.5
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    rx, ry = (x2 - x1) / 2 * rng.uniform(0.8, 1.4), (y2 - y1) / 2 * rng.uniform(0.8, 1.4)
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)


def problem(rng, gt_counts=(4, 2), crowd_rows=((1,), ()), m=6):
    anchors = yolact_anchors(IMAGE, [(8, 8), (4, 4)], scales=(12, 30), reference_size=IMAGE)
    n = anchors.shape[0]
    b = len(gt_counts)
    boxes = -np.ones((b, m, 4), np.float32)
    classes = -np.ones((b, m), np.int32)
    crowd = np.zeros((b, m), bool)
    masks = np.zeros((b, m, IMAGE, IMAGE), np.uint8)
    for k, count in enumerate(gt_counts):
        for j in range(count):
            xy = rng.uniform(0, 40, 2)
            box = np.concatenate([xy, np.minimum(xy + rng.uniform(8, 30, 2), IMAGE)])
            boxes[k, j] = box
            classes[k, j] = rng.integers(1, K)
            masks[k, j] = blob_mask(rng, box)
        crowd[k, list(crowd_rows[k])] = True
    labels, matched, targets = [t.numpy() for t in match_anchors(anchors, boxes, classes, crowd)]
    return {
        "labels": labels, "matched": matched, "box_targets": targets, "boxes": boxes,
        "classes": classes, "crowd": crowd, "masks": masks,
        "logits": rng.normal(0, 2, (b, n, K)).astype(np.float32),
        "deltas": rng.normal(0, 1, (b, n, 4)).astype(np.float32),
        "coefs": np.tanh(rng.normal(0, 1, (b, n, 4))).astype(np.float32),
        "protos": np.maximum(rng.normal(0, 1.5, (b, HP, HP, 4)), 0).astype(np.float32),
        "segm": rng.normal(0, 2, (b, HS, HS, K - 1)).astype(np.float32),
    }


def ours_tensors(p):
    return {
        "C": losses.yolact_class_loss(p["logits"], p["labels"]),
        "B": losses.yolact_box_loss(p["deltas"], p["box_targets"], p["labels"]),
        "M": losses.yolact_mask_loss(p["protos"], p["coefs"], p["labels"], p["matched"],
                                     p["boxes"], p["masks"]),
        "S": losses.yolact_semantic_loss(p["segm"], p["masks"], p["classes"], p["crowd"]),
    }


def ours(p):
    return {k: v.numpy() for k, v in ours_tensors(p).items()}


def as64(p):
    return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in p.items()}


# ----------------------------------------------------------------------------- tests


def test_all_losses_match_reference_with_crowd():
    rng = np.random.default_rng(0)
    counts = []
    for trial in range(4):
        p = problem(rng)
        pos = (p["labels"] > 0).sum(1)
        counts.append(pos)
        assert pos.min() > 0 and np.any(p["labels"] == -1)
        got, want = ours(p), reference_losses(as64(p))
        for key in "CBMS":
            assert got[key].dtype == np.float32 and got[key].shape == ()
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    assert any(c[0] != c[1] for c in counts)  # different positive counts per image


def test_mask_subset_over_masks_to_train_is_scaled():
    """> masks_to_train positives: the seeded subset, loss x (positives / kept)."""
    rng = np.random.default_rng(1)
    p = problem(rng, gt_counts=(3, 3), crowd_rows=((), ()))
    n = p["labels"].shape[1]
    labels = np.zeros_like(p["labels"])
    labels[0, rng.choice(n, 150, replace=False)] = 1  # 150 > 100 positives
    labels[1, rng.choice(n, 20, replace=False)] = 2
    p["labels"] = labels
    p["matched"] = rng.integers(0, 3, p["matched"].shape).astype(np.int32)
    seed = (7, 3)
    indices, scale = [t.numpy() for t in select_mask_anchors(labels, 100, seed)]
    assert (indices[0] >= 0).sum() == 100 and (indices[1] >= 0).sum() == 20
    assert set(indices[0]) <= set(np.flatnonzero(labels[0]))
    np.testing.assert_allclose(scale, [1.5, 1.0])
    subsets = [indices[0][indices[0] >= 0], None]
    got = losses.yolact_mask_loss(p["protos"], p["coefs"], labels, p["matched"], p["boxes"],
                                  p["masks"], seed=seed).numpy()
    want = reference_losses(as64(p), subsets)["M"]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # another seed draws another subset (and so another value), deterministically
    other = losses.yolact_mask_loss(p["protos"], p["coefs"], labels, p["matched"], p["boxes"],
                                    p["masks"], seed=(8, 3)).numpy()
    assert other != got
    # small max_masks: 3 of 20 in image 1 as well
    indices, _ = [t.numpy() for t in select_mask_anchors(labels, 3, seed)]
    got = losses.yolact_mask_loss(p["protos"], p["coefs"], labels, p["matched"], p["boxes"],
                                  p["masks"], max_masks=3, seed=seed).numpy()
    want = reference_losses(as64(p), [indices[0], indices[1]], masks_to_train=3)["M"]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cropped_out_foreground_costs_100_per_pixel():
    """The GT mask outside its (padded) box: probability 0 there, torch's clamped log."""
    protos = np.zeros((1, 4, 4, 1), np.float32)  # logits 0 everywhere: BCE log 2 inside
    coefs = np.ones((1, 1, 1), np.float32)
    masks = np.ones((1, 1, 4, 4), np.uint8)  # GT covers all, the box covers 1 pixel + padding
    boxes = np.array([[[0, 0, 1, 1]]], np.float32)
    got = losses.yolact_mask_loss(protos, coefs, [[1]], [[0]], boxes, masks, weight=1.0)
    # inside: columns/rows 0..1 (4 pixels) cost log 2; 12 outside cost 100; area 1 x 1
    np.testing.assert_allclose(got.numpy(), 4 * np.log(2) + 12 * 100, rtol=1e-6)


def test_zero_positives_give_zero_and_zero_gradient():
    rng = np.random.default_rng(2)
    p = problem(rng, gt_counts=(0, 0), crowd_rows=((), ()))
    assert not np.any(p["labels"] > 0)
    values = {k: tf.constant(v) for k, v in p.items() if v.dtype == np.float32}
    with tf.GradientTape() as tape:
        tape.watch(list(values.values()))
        result = ours_tensors({**p, **values})
    grads = tape.gradient([result[k] for k in "CBM"], list(values.values()),
                          unconnected_gradients="zero")
    for g in grads:
        assert np.all(g.numpy() == 0)
    result = {k: v.numpy() for k, v in result.items()}
    assert all(float(v) == 0.0 for k, v in result.items() if k != "S")
    assert np.isfinite(result["S"]) and result["S"] > 0  # all-background semantic targets


def test_gradients_finite_and_match_finite_differences():
    rng = np.random.default_rng(3)
    p = problem(rng)
    names = ["logits", "deltas", "coefs", "protos", "segm"]
    tensors = {k: tf.Variable(p[k]) for k in names}
    with tf.GradientTape() as tape:
        r = ours_tensors({**p, **tensors})
        total = r["C"] + r["B"] + r["M"] + r["S"]
    grads = tape.gradient(total, [tensors[k] for k in names])
    for name, g in zip(names, grads):
        assert g is not None and np.all(np.isfinite(g.numpy())), name
        assert np.any(g.numpy() != 0), name
    # central differences along one random direction per input
    for name, g in zip(names, grads):
        direction = rng.normal(size=p[name].shape).astype(np.float32)
        eps = 1e-3
        plus = {**p, name: p[name] + eps * direction}
        minus = {**p, name: p[name] - eps * direction}
        fd = (sum(ours(plus).values()) - sum(ours(minus).values())) / (2 * eps)
        np.testing.assert_allclose(np.sum(g.numpy() * direction), fd, rtol=2e-2, atol=2e-3,
                                   err_msg=name)


def test_global_normalisers_and_mixed_precision():
    rng = np.random.default_rng(4)
    p = problem(rng)
    local = ours(p)
    count = (p["labels"] > 0).sum()
    c = losses.yolact_class_loss(p["logits"], p["labels"], num_positives=2 * count)
    np.testing.assert_allclose(c.numpy(), local["C"] / 2, rtol=1e-6)
    s = losses.yolact_semantic_loss(p["segm"], p["masks"], p["classes"], p["crowd"], num_images=4)
    np.testing.assert_allclose(s.numpy(), local["S"] / 2, rtol=1e-6)
    b16 = {k: tf.constant(v, tf.bfloat16) if k in ("logits", "deltas", "coefs", "protos", "segm")
           else v for k, v in p.items()}
    half = ours(b16)
    for key in "CBMS":
        assert half[key].dtype == np.float32
        np.testing.assert_allclose(half[key], local[key], rtol=5e-2, err_msg=key)


def test_padding_rows_contribute_nothing():
    rng = np.random.default_rng(5)
    p = problem(rng)
    before = ours(p)
    q = dict(p)
    q["boxes"] = np.where(p["classes"][..., None] > 0, p["boxes"], np.nan).astype(np.float32)
    q["masks"] = np.where(p["classes"][..., None, None] > 0, p["masks"], 1).astype(np.uint8)
    after = ours(q)
    for key in "CBMS":
        np.testing.assert_allclose(after[key], before[key], rtol=1e-6, err_msg=key)


def test_graph_mode():
    rng = np.random.default_rng(6)
    p = problem(rng)
    fn = tf.function(lambda *a: losses.yolact_mask_loss(*a))
    args = [p[k] for k in ("protos", "coefs", "labels", "matched", "boxes", "masks")]
    np.testing.assert_allclose(fn(*args).numpy(), losses.yolact_mask_loss(*args).numpy(),
                               rtol=1e-6)
