"""ops.targets for the RPN: anchor labelling, sampling and box targets, against torchvision's
``RegionProposalNetwork.assign_targets_to_anchors`` and ``BalancedPositiveNegativeSampler``
(the set-up of tests/support/rpn.py)."""
import numpy as np
import tensorflow as tf

from keras_maskrcnn.ops import targets as targets_ops
from keras_maskrcnn.ops.targets import assign_anchor_targets, rpn_targets
from support.rpn import box_iou, rpn_setup


# --------------------------------------------------------------------------- anchor targets


def _gt(rng):
    """3 images: 6 GT, 2 GT (+4 padding rows), no GT; boxes inside the 256x320 input."""
    gt = -np.ones((3, 6, 4), np.float32)
    xy = rng.uniform(0, 200, (6, 2))
    wh = rng.uniform(8, 120, (6, 2))
    gt[0] = np.concatenate([xy, xy + wh], 1)
    gt[1, :2] = gt[0, [3, 1]] + 5.0
    gt[0, 5] = gt[0, 4]  # duplicate GT: ties between GT go to the first index
    valid = np.zeros((3, 6), bool)
    valid[0] = True
    valid[1, :2] = True
    return gt, valid


def test_anchor_targets_match_torchvision(torch, torchvision, rng):
    s = rpn_setup(torch, torchvision)
    gt, valid = _gt(rng)
    rpn = s["make_rpn"](dict(training=1, testing=1), dict(training=1, testing=1))
    targets = [{"boxes": torch.from_numpy(gt[b][valid[b]])} for b in range(3)]
    anchors = [s["torch_anchors"][0]] * 3
    their_labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
    their_targets = rpn.box_coder.encode(matched, anchors)
    labels, box_targets = assign_anchor_targets(s["anchors"], gt, valid, 0.7, 0.3, True)
    labels, box_targets = labels.numpy(), box_targets.numpy()
    for b in range(3):
        np.testing.assert_array_equal(labels[b], their_labels[b].numpy().astype(np.int32))
        pos = labels[b] == 1
        np.testing.assert_allclose(box_targets[b][pos], their_targets[b].numpy()[pos],
                                   rtol=1e-5, atol=1e-5)
        assert not box_targets[b][~pos].any()
    assert (labels[2] == 0).all()  # no GT: every anchor a negative candidate
    assert (labels[0] == 1).sum() > 0 and (labels[0] == -1).sum() > 0
    # low-quality matches occur (positives below 0.7), so the test covers them
    iou = box_iou(s["anchors"], gt[0]).max(axis=1)
    assert (iou[labels[0] == 1] < 0.7).any()
    # mutation: without low-quality matches the labels differ from torchvision's
    strict, _ = assign_anchor_targets(s["anchors"], gt, valid, 0.7, 0.3, False)
    assert not np.array_equal(strict.numpy()[0], their_labels[0].numpy())


def test_rpn_targets_sampling_counts(torch, torchvision, rng):
    from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
    s = rpn_setup(torch, torchvision)
    gt, valid = _gt(rng)
    before, _ = assign_anchor_targets(s["anchors"], gt, valid)
    labels, targets = rpn_targets(s["anchors"], gt, valid, batch_size_per_image=256,
                                  positive_fraction=0.5, seed=(1, 2))
    labels, before = labels.numpy(), before.numpy()
    torch.manual_seed(0)
    pos, neg = BalancedPositiveNegativeSampler(256, 0.5)(
        [torch.from_numpy(b.astype(np.float32)) for b in before])
    for b in range(3):
        assert (labels[b] == 1).sum() == int(pos[b].sum())
        assert (labels[b] == 0).sum() == int(neg[b].sum())
        assert (before[b][labels[b] == 1] == 1).all() and (before[b][labels[b] == 0] == 0).all()
        assert set(np.unique(labels[b])) <= {-1, 0, 1}
    assert (labels[2] == 0).sum() == 256 and (labels[2] == 1).sum() == 0
    assert targets.shape == (3, len(s["anchors"]), 4)
    again, _ = rpn_targets(s["anchors"], gt, valid, seed=(1, 2))
    other, _ = rpn_targets(s["anchors"], gt, valid, seed=(3, 4))
    np.testing.assert_array_equal(again.numpy(), labels)  # deterministic in the seed
    assert not np.array_equal(other.numpy(), labels)


def test_rpn_targets_tf_function_and_empty_gt():
    anchors = tf.constant([[0, 0, 10, 10], [5, 5, 15, 15], [40, 40, 60, 60]], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None, None, 4]),
                                  tf.TensorSpec([None, None], tf.bool)])
    def run(anchors, gt, valid):
        return rpn_targets(anchors, gt, valid, batch_size_per_image=2, seed=(0, 1))

    labels, targets = run(anchors, tf.zeros((2, 0, 4)), tf.zeros((2, 0), tf.bool))
    assert labels.shape == (2, 3) and (labels.numpy() >= 0).sum() == 4  # 2 negatives each
    assert not targets.numpy().any()
    gt = tf.constant([[[0, 0, 10, 10]], [[-1, -1, -1, -1]]], tf.float32)
    labels, targets = run(anchors, gt, tf.constant([[True], [False]]))
    assert labels.numpy()[0, 0] == 1 and (targets.numpy()[0, 0] == 0).all()  # exact match
    assert (labels.numpy()[1] >= 0).sum() == 2 and (labels.numpy()[1] <= 0).all()


def test_scatter_sampled_labels():
    labels = targets_ops.scatter_sampled_labels(
        tf.constant([[2, 0, -1], [-1, -1, -1]]), tf.constant([[1, 0, -1], [-1, -1, -1]]), 4)
    np.testing.assert_array_equal(labels.numpy(), [[0, -1, 1, -1], [-1, -1, -1, -1]])
