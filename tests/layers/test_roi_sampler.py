"""RoISampler against torchvision's RoIHeads.select_training_samples (and hand cases)."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.layers.roi_sampler import RoISampler
from keras_maskrcnn.ops.targets import label_candidates, sample_rois
from support.layers import assert_config_round_trip

F32 = np.float32
WEIGHTS = (10.0, 10.0, 5.0, 5.0)


# ----------------------------------------------------------------------------- data
def _jitter(rng, boxes, scale):
    """Boxes near ``boxes`` (IoU spread over [0, 1]): random corner shifts of up to scale*size."""
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    return boxes + rng.uniform(-scale, scale, boxes.shape) * wh


def make_case(rng, num_proposals=60, num_gt=6, height=300.0, width=400.0):
    """B=3: image 0 has 3 GT in interspersed rows, image 1 no GT, image 2 all M rows valid.

    Proposals: jittered GT (positives, ignored and background), random boxes, and invalid
    rows holding exact GT copies (they would be positives if they were candidates).
    """
    bsz = 3
    gt_boxes = np.full((bsz, num_gt, 4), -1.0, F32)
    gt_classes = np.full((bsz, num_gt), -1, np.int32)
    proposals = np.zeros((bsz, num_proposals, 4), F32)
    valid = rng.random((bsz, num_proposals)) < 0.85
    for b, rows in enumerate([[0, 2, 3], [], list(range(num_gt))]):
        xy = rng.uniform(0, [width * 0.7, height * 0.7], (len(rows), 2))
        wh = rng.uniform(20, 120, (len(rows), 2))
        gt = np.concatenate([xy, xy + wh], axis=1).astype(F32)
        gt_boxes[b, rows] = gt
        gt_classes[b, rows] = rng.integers(1, 8, len(rows))
        xy = rng.uniform(0, [width * 0.8, height * 0.8], (num_proposals, 2))
        props = np.concatenate([xy, xy + rng.uniform(5, 100, (num_proposals, 2))], axis=1)
        if rows:
            near = rng.integers(0, len(rows), num_proposals * 2 // 3)
            props[: near.size] = _jitter(rng, gt[near], rng.uniform(0.02, 0.4, (near.size, 1)))
            props[~valid[b]] = gt[rng.integers(0, len(rows), (~valid[b]).sum())]
        proposals[b] = np.clip(props, 0, [width, height, width, height])
    return proposals, valid, gt_boxes, gt_classes


def _tv_heads(torchvision, fg=0.5, bg=0.5, allow_low=False, size=512, fraction=0.25,
              weights=WEIGHTS):
    from torchvision.models.detection.roi_heads import RoIHeads

    heads = RoIHeads(None, None, None, fg, bg, size, fraction, weights, 0.05, 0.5, 100)
    heads.proposal_matcher.allow_low_quality_matches = allow_low
    return heads


def tv_assign(torch, heads, proposals, valid, gt_boxes, gt_classes):
    """Per image: valid candidates, labels, matched GT row (index into M) and targets."""
    out = []
    for b in range(proposals.shape[0]):
        rows = np.flatnonzero(gt_classes[b] > 0)
        gts = torch.from_numpy(gt_boxes[b, rows])
        props = heads.add_gt_proposals([torch.from_numpy(proposals[b, valid[b]])], [gts])
        matched, labels = heads.assign_targets_to_proposals(
            props, [gts], [torch.from_numpy(gt_classes[b, rows].astype(np.int64))])
        matched_boxes = gts[matched[0]] if rows.size else torch.zeros((len(props[0]), 4))
        targets = heads.box_coder.encode([matched_boxes], props)[0]
        matched_rows = rows[matched[0].numpy()] if rows.size else matched[0].numpy()
        out.append((props[0].numpy(), labels[0].numpy(), matched_rows, targets.numpy()))
    return out


def _candidate_mask(valid, gt_classes):
    return np.concatenate([valid, gt_classes > 0], axis=1)  # (B, P + M)


def check_labels(reference, proposals, valid, gt_boxes, gt_classes, **kwargs):
    """(a): every candidate's label / matched GT equals torchvision's assignment."""
    cands, cand_valid, labels, matched = (t.numpy() for t in label_candidates(
        proposals, valid, gt_boxes, gt_classes, **kwargs))
    np.testing.assert_array_equal(cand_valid, _candidate_mask(valid, gt_classes))
    for b, (tv_cands, tv_labels, tv_rows, _) in enumerate(reference):
        idx = np.flatnonzero(cand_valid[b])
        np.testing.assert_array_equal(cands[b, idx], tv_cands)
        np.testing.assert_array_equal(labels[b, idx], tv_labels)
        np.testing.assert_array_equal(matched[b, idx], tv_rows)
        assert np.all(labels[b, ~cand_valid[b]] == -1)  # invalid candidates are ignored


def check_samples(reference, out, size, fraction, weights=WEIGHTS):
    """(b) exact counts and (c) every sampled RoI's class / target equal torchvision's."""
    for b, (tv_cands, tv_labels, tv_rows, tv_targets) in enumerate(reference):
        rois, classes, targets, matched, roi_valid = (
            out[k][b] for k in ("rois", "roi_classes", "box_targets", "matched_gt", "roi_valid"))
        num_pos = min(int(size * fraction), int((tv_labels > 0).sum()))
        num_neg = min(size - num_pos, int((tv_labels == 0).sum()))
        assert (classes > 0).sum() == num_pos and (classes == 0).sum() == num_neg
        np.testing.assert_array_equal(roi_valid, np.arange(size) < num_pos + num_neg)
        assert np.all(classes[~roi_valid] == -1) and np.all(rois[~roi_valid] == 0)
        seen = set()
        for s in np.flatnonzero(roi_valid):
            hit = np.flatnonzero(np.all(tv_cands == rois[s], axis=1))
            assert hit.size >= 1, "sampled RoI is not a valid candidate"
            c = hit[0]
            assert c not in seen  # sampled without replacement
            seen.add(c)
            assert classes[s] == tv_labels[c]
            if classes[s] > 0:
                assert matched[s] == tv_rows[c]
                np.testing.assert_allclose(targets[s], tv_targets[c], rtol=1e-5, atol=1e-5)
            else:
                assert matched[s] == 0 and np.all(targets[s] == 0)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("fg,bg,allow_low", [(0.5, 0.5, False), (0.6, 0.3, True)])
def test_labels_match_torchvision(torch, torchvision, rng, fg, bg, allow_low):
    case = make_case(rng)
    heads = _tv_heads(torchvision, fg, bg, allow_low)
    reference = tv_assign(torch, heads, *case)
    assert any((r[1] > 0).any() for r in reference) and any((r[1] == -1).any()
                                                             for r in reference) == (bg < fg)
    check_labels(reference, *case, fg_iou_threshold=fg, bg_iou_threshold=bg,
                 allow_low_quality_matches=allow_low)


@pytest.mark.parametrize("size,fraction", [(512, 0.25), (16, 0.25), (24, 0.5)])
def test_samples_match_torchvision(torch, torchvision, rng, size, fraction):
    case = make_case(rng)
    heads = _tv_heads(torchvision, size=size, fraction=fraction)
    reference = tv_assign(torch, heads, *case)
    layer = RoISampler(batch_size_per_image=size, positive_fraction=fraction, seed=1)
    out = {k: v.numpy() for k, v in layer(*case).items()}
    assert out["rois"].shape == (3, size, 4) and out["roi_classes"].dtype == np.int32
    check_samples(reference, out, size, fraction)
    # torchvision's own sample has the same counts (and, at 512, the same set of RoIs)
    torch.manual_seed(0)
    tv_props, _, tv_labels, tv_targets = heads.select_training_samples(
        [torch.from_numpy(p[v]) for p, v in zip(case[0], case[1])],
        [{"boxes": torch.from_numpy(g[c > 0]), "labels": torch.from_numpy(c[c > 0]).long()}
         for g, c in zip(case[2], case[3])])
    for b in range(3):
        labels = tv_labels[b].numpy()
        ours = out["roi_classes"][b]
        assert (labels > 0).sum() == (ours > 0).sum() and (labels == 0).sum() == (ours == 0).sum()
        if size == 512:
            key = lambda boxes, cls: sorted(map(tuple, np.c_[boxes, cls].tolist()))  # noqa: E731
            valid = out["roi_valid"][b]
            assert key(out["rois"][b][valid], ours[valid]) == key(tv_props[b].numpy(), labels)


def test_mutations_are_detected(torch, torchvision, rng):
    """The comparisons above fail when a convention is broken."""
    case = make_case(rng)
    reference = tv_assign(torch, _tv_heads(torchvision), *case)
    with pytest.raises(AssertionError):  # ignore zone instead of a single 0.5 threshold
        check_labels(reference, *case, fg_iou_threshold=0.5, bg_iou_threshold=0.3)
    with pytest.raises(AssertionError):  # GT not appended: GT rows are no candidates
        check_labels(reference, *case, add_gt_as_proposals=False)
    out = {k: v.numpy() for k, v in RoISampler(box_weights=(1, 1, 1, 1), seed=0)(*case).items()}
    with pytest.raises(AssertionError):  # RPN weights instead of the box head's
        check_samples(reference, out, 512, 0.25)
    out = {k: v.numpy() for k, v in RoISampler(positive_fraction=0.5, seed=0,
                                                batch_size_per_image=16)(*case).items()}
    with pytest.raises(AssertionError):  # wrong positive fraction changes the counts
        check_samples(reference, out, 16, 0.25)


# ----------------------------------------------------------------------------- hand cases
def test_hand_case():
    """GT [0,0,10,10] class 3: IoU exactly 0.5 is foreground, 0.49 background."""
    gt = np.array([[[0, 0, 10, 10], [-1, -1, -1, -1]]], F32)
    classes = np.array([[3, -1]], np.int32)
    props = np.array([[[0, 0, 10, 5], [0, 0, 10, 4.9], [20, 20, 30, 30], [0, 0, 10, 10]]], F32)
    valid = np.array([[True, True, True, False]])  # the exact GT copy is not a candidate
    out = sample_rois(props, valid, gt, classes, seed=[1, 2], batch_size_per_image=8)
    out = {k: v.numpy()[0] for k, v in out.items()}
    np.testing.assert_array_equal(out["roi_classes"], [3, 3, 0, 0, -1, -1, -1, -1])
    np.testing.assert_array_equal(out["roi_valid"], [1, 1, 1, 1, 0, 0, 0, 0])
    pos = {tuple(r) for r in out["rois"][:2]}
    assert pos == {(0, 0, 10, 5), (0, 0, 10, 10)}  # proposal A and the appended GT
    assert {tuple(r) for r in out["rois"][2:4]} == {(0, 0, 10, F32(4.9)), (20, 20, 30, 30)}
    a = [tuple(r) for r in out["rois"]].index((0, 0, 10, 5))
    np.testing.assert_allclose(out["box_targets"][a], [0, 5, 0, 5 * np.log(2)], rtol=1e-6)
    np.testing.assert_array_equal(out["box_targets"][1 - a], 0)  # GT against itself
    np.testing.assert_array_equal(out["box_targets"][2:], 0)
    np.testing.assert_array_equal(out["matched_gt"], 0)


@pytest.mark.parametrize("num_p,num_m,num_pos,num_neg", [(0, 3, 2, 0), (5, 0, 0, 5),
                                                          (0, 0, 0, 0)])
def test_empty_inputs(num_p, num_m, num_pos, num_neg):
    """No proposals (GT only: 3 positives, 2 kept at 8 x 0.25), no GT, nothing at all."""
    props = np.tile(np.array([[0, 0, 20, 20]], F32), (2, num_p, 1))
    gt = np.tile(np.array([[2, 2, 18, 18]], F32), (2, num_m, 1))
    classes = np.ones((2, num_m), np.int32)
    out = RoISampler(batch_size_per_image=8, seed=0)(props, np.ones((2, num_p), bool), gt,
                                                     classes)
    out = {k: v.numpy() for k, v in out.items()}
    assert out["rois"].shape == (2, 8, 4) and out["box_targets"].shape == (2, 8, 4)
    np.testing.assert_array_equal((out["roi_classes"] > 0).sum(1), num_pos)
    np.testing.assert_array_equal((out["roi_classes"] == 0).sum(1), num_neg)
    np.testing.assert_array_equal(out["roi_valid"].sum(1), num_pos + num_neg)
    assert np.all(np.isfinite(out["box_targets"]))
    np.testing.assert_array_equal(out["box_targets"], 0)  # GT against itself / background


def test_padded_gt_and_no_gt_image_are_background(rng):
    case = make_case(rng)
    _, valid, _, gt_classes = case
    out = RoISampler(seed=3)(*case)
    classes = out["roi_classes"].numpy()
    assert np.all(classes[1] <= 0)  # image without GT: all background
    assert (classes[1] == 0).sum() == valid[1].sum()  # every valid proposal, nothing else
    assert set(classes[0][classes[0] > 0]) <= set(gt_classes[0][gt_classes[0] > 0])


# ----------------------------------------------------------------------------- randomness
def test_seed_determinism_and_per_call_variation(rng):
    case = make_case(rng)
    a, b = RoISampler(batch_size_per_image=16, seed=7), RoISampler(batch_size_per_image=16,
                                                                   seed=7)
    first_a, first_b = a(*case), b(*case)
    for k in first_a:
        np.testing.assert_array_equal(first_a[k].numpy(), first_b[k].numpy())
    second_a = a(*case)  # the generator advanced: another draw
    assert not np.array_equal(first_a["rois"].numpy(), second_a["rois"].numpy())
    np.testing.assert_array_equal(second_a["rois"].numpy(), b(*case)["rois"].numpy())
    fixed = [a(*case, seed=tf.constant([5, 6]))["rois"].numpy() for _ in range(2)]
    np.testing.assert_array_equal(*fixed)  # an explicit seed does not depend on the state


def test_tf_function_unknown_sizes(rng):
    case = make_case(rng)
    layer = RoISampler(batch_size_per_image=32, seed=0)
    spec = [tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.bool),
            tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32)]
    fn = tf.function(lambda *x: layer(*x, seed=tf.constant([1, 1])), input_signature=spec)
    eager = layer(*case, seed=tf.constant([1, 1]))
    graph = fn(*case)
    for k in eager:
        np.testing.assert_array_equal(eager[k].numpy(), graph[k].numpy())
    assert graph["rois"].shape[1:] == (32, 4)  # S static even with unknown P, M
    state = layer.seed_generator.state.numpy().copy()
    tf.function(lambda *x: layer(*x))(*case)
    assert layer.seed_generator.state.numpy()[1] == state[1] + 1  # advances in graph mode


def test_no_gradient_to_proposals(rng):
    case = make_case(rng)
    props = tf.Variable(case[0])
    with tf.GradientTape() as tape:
        out = RoISampler(seed=0)(props, *case[1:])
        loss = tf.reduce_sum(out["rois"]) + tf.reduce_sum(out["box_targets"])
    assert tape.gradient(loss, props) is None


# ----------------------------------------------------------------------------- keras
def test_get_config_round_trip_and_symbolic_call():
    layer = RoISampler(0.6, 0.4, True, 64, 0.5, False, (1, 2, 3, 4), seed=11, name="s")
    restored = assert_config_round_trip(layer)
    assert restored.box_weights == (1.0, 2.0, 3.0, 4.0)
    out = layer(keras.Input((None, 4)), keras.Input((None,), dtype="bool"),
                keras.Input((5, 4)), keras.Input((5,), dtype="int32"))
    assert tuple(out["rois"].shape) == (None, 64, 4) and out["roi_classes"].dtype == "int32"


def test_keras_file_round_trip(rng, tmp_path):
    """A functional model holding the sampler saves and loads; the sequence restarts at seed."""
    case = make_case(rng)
    inputs = [keras.Input((None, 4)), keras.Input((None,), dtype="bool"), keras.Input((6, 4)),
              keras.Input((6,), dtype="int32")]
    model = keras.Model(inputs, RoISampler(batch_size_per_image=16, seed=4)(*inputs))
    model.save(tmp_path / "sampler.keras")
    loaded = keras.saving.load_model(tmp_path / "sampler.keras")
    first, again = model(case), loaded(case)
    for k in first:
        np.testing.assert_array_equal(first[k].numpy(), again[k].numpy())


def test_mirrored_strategy_replicas_draw_differently():
    """Two replicas under MirroredStrategy: the state advances once per step, seeds differ."""
    script = textwrap.dedent("""
        import tensorflow as tf
        tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_maskrcnn.layers.roi_sampler import RoISampler
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        props = tf.random.stateless_uniform([1, 200, 2], [0, 1], maxval=50.0)
        props = tf.concat([props, props + 20.0], -1)
        args = (props, tf.ones([1, 200], bool), tf.constant([[[10.0, 10, 40, 40]]]),
                tf.constant([[1]]))
        with strategy.scope():
            layer = RoISampler(batch_size_per_image=8, seed=0)
            layer(*args)
        step = tf.function(lambda: strategy.run(lambda: layer(*args)["rois"]))
        rois = strategy.experimental_local_results(step())
        assert not bool(tf.reduce_all(rois[0] == rois[1])), "replicas drew the same sample"
        assert int(layer.seed_generator.state[1]) == 2, layer.seed_generator.state
        print("OK")
    """)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]
