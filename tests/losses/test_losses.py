"""Tests for keras_maskrcnn.losses against torchvision's RPN / roi_heads losses.

Every loss is compared with torchvision on identical inputs (values and autograd gradients,
1e-5), checked by finite differences, on hand-computed cases, with empty / all-padding
inputs (0, zero gradient, no NaN), with NaN garbage in padding rows, under tf.function, and
for the replica-normaliser contract. Mutation tests show the comparisons catch a wrong
normaliser / channel / index convention.
"""
import types

import numpy as np
import pytest
import tensorflow as tf
from skimage.draw import ellipse

from keras_maskrcnn import losses
from keras_maskrcnn.ops import keypoints_to_heatmap, project_masks_on_boxes

BETA = 1.0 / 9


# ----------------------------------------------------------------------------- problems


def _rpn_problem(rng, b=2, n=40):
    logits = rng.normal(0, 2, (b, n)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (b, n, 4)).astype(np.float32)
    targets = rng.normal(0, 0.5, (b, n, 4)).astype(np.float32)
    labels = rng.choice([-1, 0, 1], (b, n), p=[0.4, 0.4, 0.2]).astype(np.int32)
    labels[:, 0] = 1  # at least one positive per image
    targets[labels < 1] = np.nan  # garbage where unused: must not leak
    return logits, deltas, labels, targets


def _fastrcnn_problem(rng, b=2, r=12, k=5, agnostic=False):
    logits = rng.normal(0, 2, (b, r, k)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (b, r, 1 if agnostic else k, 4)).astype(np.float32)
    targets = rng.normal(0, 0.5, (b, r, 4)).astype(np.float32)
    classes = rng.choice(np.arange(-1, k), (b, r)).astype(np.int32)
    classes[:, 0] = 1
    targets[classes < 1] = np.nan
    logits[classes < 0] = np.nan  # padding rows: garbage logits
    return logits, deltas, classes, targets


def _mask_problem(rng, b=2, r=10, k=4, s=8, h=32, w=40, m=3):
    """GT masks, RoIs matched to GT, classes (with bg / padding), logits in our layout."""
    gt_masks = np.zeros((b, m, h, w), np.uint8)
    gt_boxes = np.zeros((b, m, 4), np.float32)
    for i in range(b):
        for j in range(m):
            rows, cols = ellipse(rng.uniform(6, h - 6), rng.uniform(6, w - 6),
                                 rng.uniform(3, 10), rng.uniform(3, 12), (h, w))
            gt_masks[i, j, rows, cols] = 1
            gt_boxes[i, j] = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    gt_labels = rng.integers(1, k, (b, m)).astype(np.int32)
    matched = rng.integers(0, m, (b, r)).astype(np.int32)
    jitter = rng.uniform(-3, 3, (b, r, 4)).astype(np.float32)
    boxes = np.take_along_axis(gt_boxes, matched[..., None], 1) + jitter  # near their GT
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 2)
    classes = np.take_along_axis(gt_labels, matched, 1)
    kind = rng.choice(3, (b, r), p=[0.6, 0.25, 0.15])  # 0 positive, 1 background, 2 padding
    kind[:, 0] = 0
    classes = np.where(kind == 0, classes, np.where(kind == 1, 0, -1)).astype(np.int32)
    logits = rng.normal(0, 2, (b, r, s, s, k)).astype(np.float32)
    return gt_masks, gt_labels, boxes, matched, classes, logits


def _keypoint_problem(rng, b=2, r=9, kp=5, s=8, m=3):
    gt_boxes = np.sort(rng.uniform(0, 60, (b, m, 2, 2)), axis=2)  # (b, m, [min, max], xy)
    gt_boxes = gt_boxes.transpose(0, 1, 3, 2).reshape(b, m, 4)[..., [0, 2, 1, 3]]
    gt_boxes[..., 2:] += 8  # (x1, y1, x2, y2) with size >= 8
    lo, hi = gt_boxes[..., None, :2], gt_boxes[..., None, 2:]  # (b, m, 1, 2)
    xy = lo + rng.uniform(-0.2, 1.2, (b, m, kp, 2)) * (hi - lo)  # some outside the box
    vis = rng.choice([0, 1, 2], (b, m, kp, 1), p=[0.3, 0.3, 0.4])
    gt_kps = np.concatenate([xy, vis], -1).astype(np.float32)
    matched = rng.integers(0, m, (b, r)).astype(np.int32)
    rois = np.take_along_axis(gt_boxes, matched[..., None], 1).astype(np.float32)
    rois += rng.uniform(-2, 2, rois.shape).astype(np.float32)
    positive = rng.random((b, r)) < 0.7
    positive[:, 0] = True
    logits = rng.normal(0, 2, (b, r, s, s, kp)).astype(np.float32)
    return gt_kps, rois, matched, positive, logits


def _our_keypoint_targets(gt_kps, rois, matched, positive, s):
    kps = np.take_along_axis(gt_kps, matched[:, :, None, None], 1)  # (b, r, kp, 3) matched GT
    targets, valid = keypoints_to_heatmap(kps, rois, s)
    return targets, tf.logical_and(valid, positive[..., None])


def _grads(fn, *args):
    """Loss value(s) and the gradients w.r.t. the float args (as numpy)."""
    variables = [tf.convert_to_tensor(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(variables)
        out = fn(*variables)
        total = tf.add_n(list(out)) if isinstance(out, tuple) else out
    return out, [g.numpy() for g in tape.gradient(total, variables)]


# ----------------------------------------------------------------------------- smooth L1


@pytest.mark.parametrize("beta", [BETA, 1.0, 0.0])
def test_smooth_l1_matches_torch(torch, rng, beta):
    x = np.concatenate([rng.normal(0, 0.3, 200), [0.0, beta, -beta, 1e-9]]).astype(np.float32)
    ours = losses.smooth_l1(x, beta).numpy()
    ref = torch.nn.functional.smooth_l1_loss(torch.from_numpy(x), torch.zeros(len(x)),
                                             beta=beta, reduction="none").numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def test_smooth_l1_hand_values():
    x = tf.constant([0.0, 0.05, -0.05, 1.0 / 9, 1.0, -2.0])
    expected = [0.0, 0.5 * 0.0025 * 9, 0.5 * 0.0025 * 9, 1 / 9 - 0.5 / 9, 1 - 0.5 / 9,
                2 - 0.5 / 9]
    np.testing.assert_allclose(losses.smooth_l1(x, BETA).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.smooth_l1(x, 0.0).numpy(), np.abs(x.numpy()))


# ----------------------------------------------------------------------------- RPN


def _tv_rpn(torch, logits, deltas, labels, targets, grads=False):
    from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
    from torchvision.models.detection.rpn import RegionProposalNetwork

    # A sampler that keeps every labelled anchor: our labels are already the sample.
    fake = types.SimpleNamespace(fg_bg_sampler=BalancedPositiveNegativeSampler(10 ** 6, 0.5))
    obj = torch.tensor(logits.reshape(-1, 1), requires_grad=grads)
    dlt = torch.tensor(deltas.reshape(-1, 4), requires_grad=grads)
    lab = [torch.from_numpy(v.astype(np.float32)) for v in labels]
    tgt = [torch.from_numpy(v) for v in targets]
    out = RegionProposalNetwork.compute_loss(fake, obj, dlt, lab, tgt)
    if not grads:
        return [v.item() for v in out]
    (out[0] + out[1]).backward()
    return [v.item() for v in out], [obj.grad.numpy().reshape(logits.shape),
                                     dlt.grad.numpy().reshape(deltas.shape)]


def test_rpn_losses_match_torchvision(torch, torchvision, rng):
    logits, deltas, labels, targets = _rpn_problem(rng)
    (obj, box), (g_logits, g_deltas) = _grads(
        lambda a, b: losses.rpn_losses(a, b, labels, targets), logits, deltas)
    ref, (r_logits, r_deltas) = _tv_rpn(torch, logits, deltas, labels, targets, grads=True)
    np.testing.assert_allclose([obj.numpy(), box.numpy()], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_logits, r_logits, atol=1e-6)
    np.testing.assert_allclose(g_deltas, r_deltas, atol=1e-6)
    assert np.all(g_logits[labels < 0] == 0) and np.all(g_deltas[labels < 1] == 0)


def test_rpn_losses_hand_case():
    logits = tf.constant([[0.0, 0.0, 5.0]])  # positive, negative, not sampled
    deltas = tf.constant([[[0.05, 0.0, 1.0, 0.0], [9.0] * 4, [9.0] * 4]])
    labels = tf.constant([[1, 0, -1]])
    obj, box = losses.rpn_losses(logits, deltas, labels, tf.zeros((1, 3, 4)))
    np.testing.assert_allclose(obj.numpy(), np.log(2.0), rtol=1e-6)  # BCE(0, y) = log 2
    np.testing.assert_allclose(box.numpy(), (0.01125 + 1 - 0.5 / 9) / 2, rtol=1e-6)


def test_rpn_mutation_box_loss_over_positives_fails(torch, torchvision, rng):
    logits, deltas, labels, targets = _rpn_problem(rng)
    _, box = losses.rpn_losses(logits, deltas, labels, targets)
    ref = _tv_rpn(torch, logits, deltas, labels, targets)[1]
    mutated = box.numpy() * (labels >= 0).sum() / (labels == 1).sum()  # / positives instead
    assert not np.isclose(mutated, ref, rtol=1e-3)
    wrong_beta = losses.rpn_losses(logits, deltas, labels, targets, beta=1.0)[1].numpy()
    assert not np.isclose(wrong_beta, ref, rtol=1e-3)


# ----------------------------------------------------------------------------- Fast R-CNN


def _tv_fastrcnn(torch, logits, deltas, classes, targets):
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    valid = classes >= 0
    cls = torch.tensor(logits[valid], requires_grad=True)  # (n, K): valid RoIs, concatenated
    dlt = torch.tensor(deltas[valid].reshape(valid.sum(), -1), requires_grad=True)  # (n, K*4)
    lab = [torch.from_numpy(c[v]).long() for c, v in zip(classes, valid)]
    tgt = [torch.from_numpy(t[v]) for t, v in zip(targets, valid)]
    out = fastrcnn_loss(cls, dlt, lab, tgt)
    (out[0] + out[1]).backward()
    g_cls = np.zeros_like(logits)
    g_cls[valid] = cls.grad.numpy()
    g_dlt = np.zeros_like(deltas)
    g_dlt[valid] = dlt.grad.numpy().reshape(-1, *deltas.shape[2:])
    return [v.item() for v in out], g_cls, g_dlt


def test_fastrcnn_losses_match_torchvision(torch, torchvision, rng):
    logits, deltas, classes, targets = _fastrcnn_problem(rng)
    (cls, box), (g_cls, g_dlt) = _grads(
        lambda a, b: losses.fastrcnn_losses(a, b, classes, targets), logits, deltas)
    ref, r_cls, r_dlt = _tv_fastrcnn(torch, logits, deltas, classes, targets)
    np.testing.assert_allclose([cls.numpy(), box.numpy()], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_cls, r_cls, atol=1e-6)  # zero on padding rows (NaN logits)
    np.testing.assert_allclose(g_dlt, r_dlt, atol=1e-6)


def test_fastrcnn_class_agnostic_deltas(torch, rng):
    logits, deltas, classes, targets = _fastrcnn_problem(rng, agnostic=True)
    _, box = losses.fastrcnn_losses(logits, deltas, classes, targets)
    pos = classes > 0
    ref = torch.nn.functional.smooth_l1_loss(
        torch.from_numpy(deltas[pos][:, 0]), torch.from_numpy(targets[pos]), beta=BETA,
        reduction="sum") / (classes >= 0).sum()
    np.testing.assert_allclose(box.numpy(), ref.item(), rtol=1e-5)


def test_fastrcnn_mutations_fail(torch, torchvision, rng):
    logits, deltas, classes, targets = _fastrcnn_problem(rng)
    ref = _tv_fastrcnn(torch, logits, deltas, classes, targets)[0]
    shifted = np.where(classes > 0, classes % (logits.shape[-1] - 1) + 1, classes)  # wrong class
    box = losses.fastrcnn_losses(logits, deltas, shifted.astype(np.int32), targets)[1].numpy()
    assert not np.isclose(box, ref[1], rtol=1e-3)
    cls = losses.fastrcnn_losses(logits, deltas, classes, targets)[0].numpy()
    padded_count = cls * (classes >= 0).sum() / classes.size  # mean over padding too
    assert not np.isclose(padded_count, ref[0], rtol=1e-3)


# ----------------------------------------------------------------------------- mask


def _tv_mask_inputs(torch, gt_masks, gt_labels, boxes, matched, classes, logits):
    pos = classes > 0
    mask_logits = torch.tensor(np.ascontiguousarray(logits[pos].transpose(0, 3, 1, 2)),
                               requires_grad=True)  # (n, S, S, K) -> (n, K, S, S)
    proposals = [torch.from_numpy(bx[p]) for bx, p in zip(boxes, pos)]
    idxs = [torch.from_numpy(mt[p]).long() for mt, p in zip(matched, pos)]
    gts = [torch.from_numpy(g) for g in gt_masks]
    labels = [torch.from_numpy(lb).long() for lb in gt_labels]
    return mask_logits, proposals, gts, labels, idxs


def test_mask_loss_matches_torchvision(torch, torchvision, rng):
    from torchvision.models.detection.roi_heads import maskrcnn_loss
    from torchvision.models.detection.roi_heads import project_masks_on_boxes as tv_project

    gt_masks, gt_labels, boxes, matched, classes, logits = _mask_problem(rng)
    s = logits.shape[2]
    tv_in = _tv_mask_inputs(torch, gt_masks, gt_labels, boxes, matched, classes, logits)
    ref = maskrcnn_loss(*tv_in)
    ref.backward()
    # torchvision's own targets, laid out in our padded (B, R, S, S) form.
    tv_targets = np.stack([tv_project(torch.from_numpy(gt_masks[i]), torch.from_numpy(boxes[i]),
                                      torch.from_numpy(matched[i]).long(), s).numpy()
                           for i in range(len(boxes))])
    tv_targets[classes <= 0] = np.nan  # unused rows: garbage must not leak
    loss, (grad,) = _grads(lambda x: losses.mask_loss(x, tv_targets, classes), logits)
    np.testing.assert_allclose(loss.numpy(), ref.item(), rtol=1e-5)
    pos = classes > 0
    np.testing.assert_allclose(grad[pos], tv_in[0].grad.numpy().transpose(0, 2, 3, 1), atol=1e-7)
    assert np.all(grad[~pos] == 0)
    # The formula on the same targets: torch's BCE on the GT channel.
    chan = np.take_along_axis(logits[pos], classes[pos][:, None, None, None], -1)[..., 0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(chan), torch.from_numpy(tv_targets[pos]))
    np.testing.assert_allclose(loss.numpy(), bce.item(), rtol=1e-5)
    # Our fixed-sampling targets (sampling_ratio 2) vs torchvision's adaptive ones: close.
    ours = project_masks_on_boxes(gt_masks, boxes, matched, s)
    ours_loss = losses.mask_loss(logits, ours, classes).numpy()
    assert abs(ours_loss - ref.item()) < 2e-2 * ref.item(), (ours_loss, ref.item())


def test_mask_loss_class_agnostic_and_hand_case(torch):
    logits = np.zeros((1, 3, 2, 2, 1), np.float32)
    logits[0, 0] = 2.0
    targets = np.ones((1, 3, 2, 2), np.float32)
    classes = np.array([[3, 0, -1]], np.int32)  # class id ignored for K = 1
    expected = np.log1p(np.exp(-2.0))  # BCE(2, 1) on every pixel of the one positive RoI
    np.testing.assert_allclose(losses.mask_loss(logits, targets, classes).numpy(), expected,
                               rtol=1e-6)


def test_mask_loss_mutation_wrong_channel_fails(torch, torchvision, rng):
    from torchvision.models.detection.roi_heads import maskrcnn_loss

    gt_masks, gt_labels, boxes, matched, classes, logits = _mask_problem(rng)
    targets = project_masks_on_boxes(gt_masks, boxes, matched, logits.shape[2]).numpy()
    # Informative logits on the GT channel only, so a wrong channel is clearly worse.
    onehot = np.eye(logits.shape[-1], dtype=bool)[np.maximum(classes, 0)][:, :, None, None]
    logits = np.where(onehot, 8.0 * (targets[..., None] - 0.5), logits).astype(np.float32)
    ref = maskrcnn_loss(*_tv_mask_inputs(torch, gt_masks, gt_labels, boxes, matched, classes,
                                         logits)).item()
    np.testing.assert_allclose(losses.mask_loss(logits, targets, classes).numpy(), ref,
                               rtol=0.05)
    rolled = np.roll(logits, 1, axis=-1)  # channel c now holds class c - 1's logits
    assert not np.isclose(losses.mask_loss(rolled, targets, classes).numpy(), ref, rtol=0.5)


# ----------------------------------------------------------------------------- keypoints


def _tv_keypoint(torch, gt_kps, rois, matched, positive, logits):
    from torchvision.models.detection.roi_heads import keypointrcnn_loss

    kp_logits = torch.tensor(np.ascontiguousarray(logits[positive].transpose(0, 3, 1, 2)),
                             requires_grad=True)  # (n, S, S, Kp) -> (n, Kp, S, S)
    loss = keypointrcnn_loss(kp_logits, [torch.from_numpy(r[p]) for r, p in zip(rois, positive)],
                             [torch.from_numpy(g) for g in gt_kps],
                             [torch.from_numpy(m[p]).long() for m, p in zip(matched, positive)])
    loss.backward()
    return loss.item(), kp_logits.grad.numpy().transpose(0, 2, 3, 1)


def test_keypoint_loss_matches_torchvision(torch, torchvision, rng):
    gt_kps, rois, matched, positive, logits = _keypoint_problem(rng)
    s = logits.shape[2]
    targets, valid = _our_keypoint_targets(gt_kps, rois, matched, positive, s)
    assert 0 < valid.numpy().sum() < valid.numpy().size  # some valid, some not
    loss, (grad,) = _grads(lambda x: losses.keypoint_loss(x, targets, valid), logits)
    ref, ref_grad = _tv_keypoint(torch, gt_kps, rois, matched, positive, logits)
    np.testing.assert_allclose(loss.numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(grad[positive], ref_grad, atol=1e-7)
    assert np.all(grad[~positive] == 0)


def test_keypoint_loss_hand_case_and_index_convention():
    s = 2
    logits = np.zeros((1, 1, s, s, 2), np.float32)
    logits[0, 0, 0, 1, 0] = 3.0  # keypoint 0: peak at row y=0, column x=1 -> index 1
    targets = np.array([[[1, 3]]], np.int32)
    valid = np.array([[[True, False]]])
    expected = np.log(3 + np.exp(3.0)) - 3.0  # CE of the peak cell
    np.testing.assert_allclose(losses.keypoint_loss(logits, targets, valid).numpy(), expected,
                               rtol=1e-5)
    swapped = np.swapaxes(logits, 2, 3)  # mutation: x and y exchanged -> peak at index 2
    assert losses.keypoint_loss(swapped, targets, valid).numpy() > 3.0  # log(3 + e^3)


def test_keypoint_mutation_mean_over_all_fails(torch, torchvision, rng):
    gt_kps, rois, matched, positive, logits = _keypoint_problem(rng)
    targets, valid = _our_keypoint_targets(gt_kps, rois, matched, positive, logits.shape[2])
    ref = _tv_keypoint(torch, gt_kps, rois, matched, positive, logits)[0]
    all_valid = tf.logical_and(tf.ones_like(valid), positive[..., None])  # ignore visibility
    assert not np.isclose(losses.keypoint_loss(logits, targets, all_valid).numpy(), ref,
                          rtol=1e-2)


# ----------------------------------------------------------------------------- all losses


def _all_losses(rng, b=2):
    """Small problems for every loss: (name, fn, float args, label args, count kwarg, count).

    ``fn(*float_args, *label_args, **{count_kwarg: n})`` is the loss; ``count(*label_args)``
    is its local normaliser.
    """
    rpn_l, rpn_d, rpn_lab, rpn_t = _rpn_problem(rng, b=b, n=6)
    fr_l, fr_d, fr_c, fr_t = _fastrcnn_problem(rng, b=b, r=4, k=3)
    fr_l = np.nan_to_num(fr_l)  # finite differences perturb every entry
    _, _, _, _, m_c, m_l = _mask_problem(rng, b=b, r=3, k=2, s=3)
    m_t = rng.random(m_l.shape[:4]).astype(np.float32)
    kp_t = rng.integers(0, 9, (b, 3, 2)).astype(np.int32)
    kp_v = rng.random((b, 3, 2)) < 0.5
    kp_l = rng.normal(0, 1, (b, 3, 3, 3, 2)).astype(np.float32)
    return [
        ("rpn", losses.rpn_losses, [rpn_l, rpn_d], [rpn_lab, rpn_t], "num_sampled",
         lambda lab, _: (lab >= 0).sum()),
        ("fastrcnn", losses.fastrcnn_losses, [fr_l, fr_d], [fr_c, fr_t], "num_rois",
         lambda c, _: (c >= 0).sum()),
        ("mask", losses.mask_loss, [m_l], [m_t, m_c], "num_positives", lambda _, c: (c > 0).sum()),
        ("keypoint", losses.keypoint_loss, [kp_l], [kp_t, kp_v], "num_valid",
         lambda _, v: v.sum()),
    ]


def _total(out):
    return tf.add_n(list(out)) if isinstance(out, tuple) else out


def test_finite_difference_gradients(rng):
    for name, fn, args, labels, _, _ in _all_losses(rng):
        theory, numeric = tf.test.compute_gradient(
            lambda *a, fn=fn, labels=labels: _total(fn(*a, *labels)), args, delta=1e-2)
        for t, n in zip(theory, numeric):
            assert np.abs(t).max() > 1e-3, name  # the check is not vacuous
            np.testing.assert_allclose(t, n, atol=2e-3, err_msg=name)


def test_replica_normaliser_contract(rng):
    """Halves with the global count sum to the full-batch loss (the all-reduce contract)."""
    for name, fn, args, labels, count_name, count in _all_losses(rng, b=4):
        full = np.array(fn(*args, *labels), ndmin=1)
        total = count(*labels)
        parts = []
        for sl in (slice(0, 2), slice(2, 4)):
            half_labels = [v[sl] for v in labels]
            assert count(*half_labels) < total, name  # local counts differ from the global
            out = fn(*[a[sl] for a in args], *half_labels, **{count_name: total})
            parts.append(np.array(out, ndmin=1))
        np.testing.assert_allclose(parts[0] + parts[1], full, rtol=1e-5, err_msg=name)
        local = [np.array(fn(*[a[sl] for a in args], *[v[sl] for v in labels]), ndmin=1)
                 for sl in (slice(0, 2), slice(2, 4))]
        assert not np.allclose(local[0] + local[1], full, rtol=1e-3), name  # mutation


def test_no_positives_gives_zero_loss_and_zero_gradient():
    b, n, r, k, s, kp = 2, 5, 4, 3, 4, 2
    cases = [
        (lambda l, d: losses.rpn_losses(l, d, -tf.ones((b, n), tf.int32), tf.zeros((b, n, 4))),
         [tf.ones((b, n)), tf.ones((b, n, 4))]),
        (lambda l, d: losses.fastrcnn_losses(l, d, -tf.ones((b, r), tf.int32),
                                             tf.fill((b, r, 4), np.nan)),
         [tf.ones((b, r, k)), tf.ones((b, r, k, 4))]),
        (lambda l: losses.mask_loss(l, tf.fill((b, r, s, s), np.nan),
                                    tf.constant([[0, -1, 0, 0]] * b)),
         [tf.ones((b, r, s, s, k))]),
        (lambda l: losses.keypoint_loss(l, tf.fill((b, r, kp), 99), tf.zeros((b, r, kp), bool)),
         [tf.ones((b, r, s, s, kp))]),
    ]
    for fn, args in cases:
        out, grads = _grads(fn, *args)
        assert np.all(np.array(out, ndmin=1) == 0)
        for g in grads:
            assert np.all(g == 0)  # defined (not None), finite, zero


def test_empty_inputs():
    out = losses.rpn_losses(tf.zeros((2, 0)), tf.zeros((2, 0, 4)), tf.zeros((2, 0), tf.int32),
                            tf.zeros((2, 0, 4)))
    assert np.all(np.array(out) == 0)
    out = losses.fastrcnn_losses(tf.zeros((2, 0, 3)), tf.zeros((2, 0, 3, 4)),
                                 tf.zeros((2, 0), tf.int32), tf.zeros((2, 0, 4)))
    assert np.all(np.array(out) == 0)
    assert losses.mask_loss(tf.zeros((2, 0, 4, 4, 3)), tf.zeros((2, 0, 4, 4)),
                            tf.zeros((2, 0), tf.int32)).numpy() == 0
    assert losses.keypoint_loss(tf.zeros((2, 0, 4, 4, 2)), tf.zeros((2, 0, 2), tf.int32),
                                tf.zeros((2, 0, 2), bool)).numpy() == 0


def test_padding_rows_contribute_nothing(rng):
    logits, deltas, classes, targets = _fastrcnn_problem(rng, b=1, r=6)
    keep = classes[0] >= 0
    clean = losses.fastrcnn_losses(logits[:, keep], deltas[:, keep], classes[:, keep],
                                   targets[:, keep])
    padded = losses.fastrcnn_losses(logits, np.where(classes[..., None, None] < 0, 1e30, deltas),
                                    classes, targets)  # padding: NaN logits, huge deltas
    np.testing.assert_allclose(np.array(padded), np.array(clean), rtol=1e-6)


def test_graph_mode_and_mixed_precision(rng):
    for name, fn, args, labels, _, _ in _all_losses(rng):
        eager = np.array(fn(*args, *labels), ndmin=1)
        graph = np.array(tf.function(fn, jit_compile=False)(*args, *labels), ndmin=1)
        np.testing.assert_allclose(graph, eager, rtol=1e-6, err_msg=name)
        inputs = [tf.convert_to_tensor(v) for v in args + labels]
        spec = [tf.TensorSpec([None] * v.shape.rank, v.dtype) for v in inputs]  # unknown dims
        dynamic = tf.function(fn, input_signature=spec, jit_compile=False)(*inputs)
        np.testing.assert_allclose(np.array(dynamic, ndmin=1), eager, rtol=1e-6, err_msg=name)
        half = fn(*[tf.cast(a, tf.bfloat16) for a in args], *labels)
        for v in (half if isinstance(half, tuple) else (half,)):
            assert v.dtype == tf.float32 and np.isfinite(v.numpy()), name
