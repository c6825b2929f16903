"""Box / mask / keypoint heads and predictors, and their torchvision weight import.

Oracle: torchvision's TwoMLPHead, FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor,
KeypointRCNNHeads and KeypointRCNNPredictor with random weights (biases randomised too), converted
through keras_maskrcnn.convert.torchvision.load_*_head_weights, on the same random RoI features.
"""
import numpy as np
import pytest
import tensorflow as tf
import keras

from keras_maskrcnn.convert import torchvision as tvconvert
from keras_maskrcnn.layers.heads import (BoxHead, BoxPredictor, KeypointHead, KeypointPredictor,
                                         MaskHead, MaskPredictor, upsample_bilinear_2x)
from support.layers import assert_config_round_trip

TOL = 1e-4


def _rel_err(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(theirs)), 1e-12))


def _features(rng, b, r, p, c):
    return rng.normal(size=(b, r, p, p, c)).astype(np.float32)


def _torch_forward(torch, module, x):
    """Runs ``module`` on our [B, R, P, P, C] features as torch (B * R, C, P, P), one thread."""
    b, r = x.shape[:2]
    x = x.reshape((b * r,) + x.shape[2:]).transpose(0, 3, 1, 2)  # (B * R, C, P, P)
    t = torch.from_numpy(np.ascontiguousarray(x))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: avoid oversubscribing next to TF's pool
    try:
        with torch.no_grad():
            return module(t)
    finally:
        torch.set_num_threads(threads)


def _nchw_to_ours(t, b, r):
    y = t.numpy().transpose(0, 2, 3, 1)  # (B * R, S, S, K) NHWC
    return y.reshape((b, r) + y.shape[1:])  # (B, R, S, S, K)


def _randomise_biases(torch, *modules):
    torch.manual_seed(1)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.2)
    for module in modules:
        module.eval()


def _prefixed(prefix, module):
    return {prefix + k: v for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------ box head

def _torch_box(torch, torchvision, c, p, fc_dim, k):
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    torch.manual_seed(0)
    head, pred = TwoMLPHead(c * p * p, fc_dim), FastRCNNPredictor(fc_dim, k)
    _randomise_biases(torch, head, pred)
    sd = {**_prefixed("roi_heads.box_head.", head), **_prefixed("roi_heads.box_predictor.", pred)}
    return head, pred, sd


def _ours_box(c, p, fc_dim, k, class_agnostic=False):
    head, pred = BoxHead(2, fc_dim), BoxPredictor(k, class_agnostic=class_agnostic)
    head.build((None, None, p, p, c))
    pred.build((None, None, fc_dim))
    return head, pred


def _box_parity(torch, torchvision, rng, b, r, c, p, fc_dim, k):
    thead, tpred, sd = _torch_box(torch, torchvision, c, p, fc_dim, k)
    head, pred = _ours_box(c, p, fc_dim, k)
    consumed = tvconvert.load_box_head_weights(head, pred, sd)
    assert consumed == set(sd)
    x = _features(rng, b, r, p, c)
    feats = head(x)
    out = pred(feats)
    tfeats = _torch_forward(torch, thead, x)
    with torch.no_grad():
        tlogits, tdeltas = tpred(tfeats)
    return {
        "features": _rel_err(feats, tfeats.numpy().reshape(b, r, fc_dim)),
        "class_logits": _rel_err(out["class_logits"], tlogits.numpy().reshape(b, r, k)),
        "box_deltas": _rel_err(out["box_deltas"], tdeltas.numpy().reshape(b, r, k, 4)),
    }


def test_box_head_parity_small(torch, torchvision, rng):
    errs = _box_parity(torch, torchvision, rng, b=2, r=3, c=8, p=7, fc_dim=32, k=5)
    assert max(errs.values()) < TOL, errs


def test_box_head_parity_real_sizes(torch, torchvision, rng):
    errs = _box_parity(torch, torchvision, rng, b=1, r=4, c=256, p=7, fc_dim=1024, k=91)
    assert max(errs.values()) < TOL, errs


def test_box_head_parity_needs_fc6_permutation(torch, torchvision, rng, monkeypatch):
    """Mutation: loading fc6 as a plain transposed Linear (no (C,P,P) -> (P,P,C)) must fail."""
    monkeypatch.setattr(tvconvert, "torch_fc6_to_keras", lambda w, shape: np.transpose(w))
    errs = _box_parity(torch, torchvision, rng, b=2, r=3, c=8, p=7, fc_dim=32, k=5)
    assert errs["features"] > 0.1, errs


def test_fc6_permutation_hand_case():
    # C=2, P=1x2: torch flatten order (c, y, x) = [c0x0, c0x1, c1x0, c1x1]; ours (y, x, c).
    w = np.arange(4, dtype=np.float32)[None]  # (D=1, 4), weight = torch input index
    kernel = tvconvert.torch_fc6_to_keras(w, (1, 2, 2))
    np.testing.assert_array_equal(kernel[:, 0], [0, 2, 1, 3])  # ours: x0c0, x0c1, x1c0, x1c1


def test_box_predictor_delta_layout_and_agnostic(rng):
    pred = BoxPredictor(3)
    pred.build((None, None, 4))
    pred.bbox_pred.kernel.assign(np.zeros((4, 12), np.float32))
    pred.bbox_pred.bias.assign(np.arange(12, dtype=np.float32))  # unit k * 4 + c
    deltas = pred(np.zeros((2, 5, 4), np.float32))["box_deltas"].numpy()
    assert deltas.shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(deltas[1, 4], np.arange(12).reshape(3, 4))
    agnostic = BoxPredictor(3, class_agnostic=True)
    out = agnostic(rng.normal(size=(2, 5, 4)).astype(np.float32))
    assert out["class_logits"].shape == (2, 5, 3) and out["box_deltas"].shape == (2, 5, 1, 4)


def test_box_predictor_agnostic_rejects_class_specific_checkpoint(torch, torchvision):
    _, _, sd = _torch_box(torch, torchvision, c=4, p=2, fc_dim=8, k=5)
    head, pred = _ours_box(c=4, p=2, fc_dim=8, k=5, class_agnostic=True)
    with pytest.raises(ValueError, match=r"box_predictor\.bbox_pred\.weight.*\(4, 8\).*\(20, 8\)"):
        tvconvert.load_box_head_weights(head, pred, sd)


# ------------------------------------------------------------------------------------ mask head

def _torch_mask(torch, torchvision, c, dim, num_convs, k, dilation=1):
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    torch.manual_seed(0)
    head = MaskRCNNHeads(c, [dim] * num_convs, dilation)
    pred = MaskRCNNPredictor(dim, dim, k)
    _randomise_biases(torch, head, pred)
    sd = {**_prefixed("roi_heads.mask_head.", head),
          **_prefixed("roi_heads.mask_predictor.", pred)}
    return head, pred, sd


def _mask_parity(torch, torchvision, rng, b, r, p, c, dim, num_convs, k, dilation=1,
                 old_keys=False):
    thead, tpred, sd = _torch_mask(torch, torchvision, c, dim, num_convs, k, dilation)
    if old_keys:  # torchvision < 0.13 names: mask_head.mask_fcn{i+1}.weight
        sd = {(k_.replace(f"mask_head.{k_.split('.')[2]}.0.",
                          f"mask_head.mask_fcn{int(k_.split('.')[2]) + 1}.")
               if ".mask_head." in k_ else k_): v for k_, v in sd.items()}
        assert "roi_heads.mask_head.mask_fcn1.weight" in sd
    head, pred = MaskHead(num_convs, dim, dilation=dilation), MaskPredictor(k, dim)
    head.build((None, None, p, p, c))
    pred.build((None, None, p, p, dim))
    assert tvconvert.load_mask_head_weights(head, pred, sd) == set(sd)
    x = _features(rng, b, r, p, c)
    feats = head(x)
    logits = pred(feats)
    assert logits.dtype == tf.float32 and logits.shape == (b, r, 2 * p, 2 * p, k)
    tfeats = _torch_forward(torch, thead, x)
    with torch.no_grad():
        tlogits = tpred(tfeats)
    return {"features": _rel_err(feats, _nchw_to_ours(tfeats, b, r)),
            "logits": _rel_err(logits, _nchw_to_ours(tlogits, b, r))}


@pytest.mark.parametrize("old_keys", [False, True])
def test_mask_head_parity_small(torch, torchvision, rng, old_keys):
    errs = _mask_parity(torch, torchvision, rng, b=2, r=3, p=14, c=8, dim=16, num_convs=4, k=3,
                        old_keys=old_keys)
    assert max(errs.values()) < TOL, errs


def test_mask_head_parity_dilation_odd_size(torch, torchvision, rng):
    errs = _mask_parity(torch, torchvision, rng, b=1, r=2, p=9, c=4, dim=8, num_convs=2, k=1,
                        dilation=2)
    assert max(errs.values()) < TOL, errs


def test_mask_head_parity_real_sizes(torch, torchvision, rng):
    errs = _mask_parity(torch, torchvision, rng, b=1, r=2, p=14, c=256, dim=256, num_convs=4,
                        k=91)
    assert max(errs.values()) < TOL, errs


# -------------------------------------------------------------------------------- keypoint head

def _keypoint_parity(torch, torchvision, rng, b, r, p, c, dim, num_convs, kp):
    from torchvision.models.detection.keypoint_rcnn import (KeypointRCNNHeads,
                                                            KeypointRCNNPredictor)
    torch.manual_seed(0)
    thead, tpred = KeypointRCNNHeads(c, [dim] * num_convs), KeypointRCNNPredictor(dim, kp)
    _randomise_biases(torch, thead, tpred)
    sd = {**_prefixed("roi_heads.keypoint_head.", thead),
          **_prefixed("roi_heads.keypoint_predictor.", tpred)}
    head, pred = KeypointHead(num_convs, dim), KeypointPredictor(kp)
    head.build((None, None, p, p, c))
    pred.build((None, None, p, p, dim))
    assert tvconvert.load_keypoint_head_weights(head, pred, sd) == set(sd)
    x = _features(rng, b, r, p, c)
    feats = head(x)
    logits = pred(feats)
    assert logits.dtype == tf.float32 and logits.shape == (b, r, 4 * p, 4 * p, kp)
    tfeats = _torch_forward(torch, thead, x)
    with torch.no_grad():
        tlow = tpred.kps_score_lowres(tfeats)
        tlogits = tpred(tfeats)
    low = pred.kps_score_lowres(tf.reshape(feats, (-1, p, p, dim)))[:, 1:-1, 1:-1, :]
    return {"features": _rel_err(feats, _nchw_to_ours(tfeats, b, r)),
            "lowres": _rel_err(tf.reshape(low, (b, r, 2 * p, 2 * p, kp)),
                               _nchw_to_ours(tlow, b, r)),
            "logits": _rel_err(logits, _nchw_to_ours(tlogits, b, r))}


def test_keypoint_head_parity_small(torch, torchvision, rng):
    errs = _keypoint_parity(torch, torchvision, rng, b=2, r=2, p=14, c=8, dim=16, num_convs=8,
                            kp=17)
    assert max(errs.values()) < TOL, errs


def test_keypoint_head_parity_odd_size(torch, torchvision, rng):
    errs = _keypoint_parity(torch, torchvision, rng, b=1, r=3, p=5, c=4, dim=8, num_convs=2, kp=3)
    assert max(errs.values()) < TOL, errs


def test_keypoint_head_parity_real_sizes(torch, torchvision, rng):
    errs = _keypoint_parity(torch, torchvision, rng, b=1, r=1, p=14, c=256, dim=512,
                            num_convs=8, kp=17)
    assert max(errs.values()) < TOL, errs


def test_upsample_bilinear_2x_matches_torch(torch, rng):
    x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), scale_factor=2.0, mode="bilinear",
        align_corners=False, recompute_scale_factor=False).numpy().transpose(0, 2, 3, 1)
    ours = upsample_bilinear_2x(x).numpy()
    assert _rel_err(ours, theirs) < 1e-6
    # Hand case, 1-D: [0, 4] -> [0, 1, 3, 4] (sources -0.25 -> clamped 0, 0.25, 0.75, 1.25 -> 1).
    row = upsample_bilinear_2x(np.array([[[0.0], [4.0]]], np.float32)[:, None])  # [1,1,2,1]
    np.testing.assert_allclose(row.numpy()[0, 0, :, 0], [0, 1, 3, 4], atol=1e-6)
    # Mutation: the legacy (non half-pixel) TF resize is a different convention and must differ.
    legacy = tf.compat.v1.image.resize_bilinear(x, (10, 14), half_pixel_centers=False).numpy()
    assert _rel_err(legacy, theirs) > 0.05


# ---------------------------------------------------------------------------------- converter

def test_full_torchvision_models_roi_heads_keys_all_consumed(torch, torchvision):
    """Default-sized heads take every roi_heads.* key of torchvision's detection models."""
    from torchvision.models import detection
    torch.manual_seed(0)
    sd = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    box_head, box_pred = BoxHead(), BoxPredictor(91)
    box_head.build((None, None, 7, 7, 256))
    box_pred.build((None, None, 1024))
    mask_head, mask_pred = MaskHead(), MaskPredictor(91)
    mask_head.build((None, None, 14, 14, 256))
    mask_pred.build((None, None, 14, 14, 256))
    consumed = (tvconvert.load_box_head_weights(box_head, box_pred, sd)
                | tvconvert.load_mask_head_weights(mask_head, mask_pred, sd))
    assert consumed == {k for k in sd if k.startswith("roi_heads.")}
    sd = detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    kp_head, kp_pred = KeypointHead(), KeypointPredictor(17)
    kp_head.build((None, None, 14, 14, 256))
    kp_pred.build((None, None, 14, 14, 512))
    box_pred = BoxPredictor(2)
    box_pred.build((None, None, 1024))
    consumed = (tvconvert.load_box_head_weights(box_head, box_pred, sd)
                | tvconvert.load_keypoint_head_weights(kp_head, kp_pred, sd))
    assert consumed == {k for k in sd if k.startswith("roi_heads.")}
    np.testing.assert_array_equal(kp_pred.kps_score_lowres.kernel.numpy(), np.transpose(
        sd["roi_heads.keypoint_predictor.kps_score_lowres.weight"].numpy(), (2, 3, 1, 0)))


def test_converter_errors_name_the_key(torch, torchvision):
    _, _, sd = _torch_box(torch, torchvision, c=4, p=2, fc_dim=8, k=3)
    head, pred = _ours_box(c=4, p=2, fc_dim=8, k=3)
    before = [w.numpy().copy() for w in head.weights + pred.weights]
    missing = {k: v for k, v in sd.items() if k != "roi_heads.box_head.fc7.bias"}
    with pytest.raises(KeyError, match=r"roi_heads\.box_head\.fc7\.bias"):
        tvconvert.load_box_head_weights(head, pred, missing)
    extra = dict(sd, **{"roi_heads.box_predictor.extra.weight": np.zeros(1)})
    with pytest.raises(ValueError, match=r"roi_heads\.box_predictor\.extra\.weight"):
        tvconvert.load_box_head_weights(head, pred, extra)
    wrong_c, _ = _ours_box(c=8, p=2, fc_dim=8, k=3)
    with pytest.raises(ValueError, match=r"box_head\.fc6\.weight.*\(8, 32\).*\(8, 16\)"):
        tvconvert.load_box_head_weights(wrong_c, pred, sd)
    for w, old in zip(head.weights + pred.weights, before):  # all or nothing: untouched
        np.testing.assert_array_equal(w.numpy(), old)
    with pytest.raises(ValueError, match="not built"):
        tvconvert.load_mask_head_weights(MaskHead(1, 4), None, {})


def test_mask_converter_shape_mismatch_names_key(torch, torchvision):
    _, _, sd = _torch_mask(torch, torchvision, c=4, dim=8, num_convs=2, k=3)
    head, pred = MaskHead(2, 8), MaskPredictor(5, 8)  # 5 classes vs a 3-class checkpoint
    head.build((None, None, 6, 6, 4))
    pred.build((None, None, 6, 6, 8))
    with pytest.raises(ValueError, match=r"mask_predictor\.mask_fcn_logits\.weight"):
        tvconvert.load_mask_head_weights(head, pred, sd)
    # Fine-tuning: skip the predictor, the head still loads and consumes only its keys.
    consumed = tvconvert.load_mask_head_weights(head, None, sd)
    assert consumed == {k for k in sd if ".mask_head." in k}


def test_swapping_the_predictor_keeps_head_weights(torch, torchvision, rng):
    _, _, sd = _torch_box(torch, torchvision, c=4, p=3, fc_dim=16, k=5)
    head, pred = _ours_box(c=4, p=3, fc_dim=16, k=5)
    tvconvert.load_box_head_weights(head, pred, sd)
    x = _features(rng, 2, 3, 3, 4)
    feats = head(x).numpy()
    new_pred = BoxPredictor(3)
    out = new_pred(head(x))
    assert out["class_logits"].shape == (2, 3, 3) and out["box_deltas"].shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(head(x).numpy(), feats)
    np.testing.assert_array_equal(head.fcs[1].kernel.numpy().T,
                                  sd["roi_heads.box_head.fc7.weight"].numpy())


# ---------------------------------------------------------------------------- layer harness

_LAYERS = [
    (lambda: BoxHead(2, 16), (7, 4), lambda b, r: (b, r, 16)),
    (lambda: MaskHead(2, 8), (9, 4), lambda b, r: (b, r, 9, 9, 8)),
    (lambda: MaskPredictor(3, 8), (9, 4), lambda b, r: (b, r, 18, 18, 3)),
    (lambda: KeypointHead(2, 8), (9, 4), lambda b, r: (b, r, 9, 9, 8)),
    (lambda: KeypointPredictor(5), (9, 4), lambda b, r: (b, r, 36, 36, 5)),
]


@pytest.mark.parametrize("make, pc, out_shape", _LAYERS)
def test_symbolic_eager_and_tf_function_shapes(make, pc, out_shape, rng):
    p, c = pc
    layer = make()
    symbolic = layer(keras.Input((None, p, p, c)))
    assert tuple(symbolic.shape) == out_shape(None, None)
    eager = layer(_features(rng, 2, 3, p, c))
    assert tuple(eager.shape) == out_shape(2, 3)
    fn = tf.function(layer.call, input_signature=[tf.TensorSpec([None, None, p, p, c])])
    for b, r in ((2, 3), (1, 5), (2, 0)):  # unknown B and R, including no RoIs at all
        x = _features(rng, b, r, p, c)
        y = fn(x)
        assert tuple(y.shape) == out_shape(b, r)
        np.testing.assert_allclose(y.numpy(), layer(x).numpy(), rtol=1e-5, atol=1e-6)
    assert tuple(fn.get_concrete_function().structured_outputs.shape) == out_shape(None, None)


def test_box_predictor_symbolic_shapes():
    out = BoxPredictor(4)(keras.Input((None, 16)))
    assert tuple(out["class_logits"].shape) == (None, None, 4)
    assert tuple(out["box_deltas"].shape) == (None, None, 4, 4)


@pytest.mark.parametrize("layer", [
    BoxHead(num_fc=3, fc_dim=64, name="bh"), BoxPredictor(7, class_agnostic=True),
    MaskHead(num_convs=0, conv_dim=32, dilation=2), MaskPredictor(2, conv_dim=16),
    KeypointHead(num_convs=3, conv_dim=24), KeypointPredictor(11)])
def test_get_config_round_trip(layer):
    assert_config_round_trip(layer)


def test_keras_save_load_round_trip(tmp_path, rng):
    x_box = keras.Input((None, 5, 5, 4))
    x_mask = keras.Input((None, 6, 6, 4))
    box = BoxPredictor(3)(BoxHead(2, 8)(x_box))
    mask = MaskPredictor(3, 8)(MaskHead(1, 8)(x_mask))
    kp = KeypointPredictor(2)(KeypointHead(1, 8)(x_mask))
    model = keras.Model([x_box, x_mask], {**box, "mask_logits": mask, "keypoint_logits": kp})
    inputs = [_features(rng, 2, 3, 5, 4), _features(rng, 2, 3, 6, 4)]
    path = str(tmp_path / "heads.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    ours, theirs = model(inputs), loaded(inputs)
    for key in ours:
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy())


def test_mixed_precision_outputs_float32(rng):
    x = _features(rng, 1, 2, 6, 4)
    feats = MaskHead(1, 8, dtype="mixed_bfloat16")(x)
    assert feats.dtype == tf.bfloat16
    assert MaskPredictor(3, 8, dtype="mixed_bfloat16")(feats).dtype == tf.float32
    assert KeypointPredictor(3, dtype="mixed_bfloat16")(feats).dtype == tf.float32
    out = BoxPredictor(3, dtype="mixed_bfloat16")(BoxHead(1, 8, dtype="mixed_bfloat16")(x))
    assert out["class_logits"].dtype == tf.float32 and out["box_deltas"].dtype == tf.float32


def test_rejects_bad_input_rank():
    with pytest.raises(ValueError, match=r"\[B, R, P, P, C\]"):
        BoxHead(1, 8).build((None, 7, 7, 4))
    with pytest.raises(ValueError, match=r"\[B, R, P, P, C\]"):
        MaskHead(1, 8).build((None, 7, 7, 4))


@pytest.mark.parametrize("make", [lambda chunk: MaskHead(2, 8, inference_chunk=chunk),
                                  lambda chunk: KeypointHead(2, 8, inference_chunk=chunk)])
def test_inference_chunks_equal_one_pass(make, rng):
    """At inference the conv stack runs on chunks of RoIs in a while loop: same outputs as one
    pass (training=True, or no chunking) for chunk sizes that do and do not divide B * R."""
    x = _features(rng, 2, 5, 14, 4)  # B * R = 10 RoIs
    whole = make(None)
    reference = whole(x).numpy()
    np.testing.assert_array_equal(whole(x, training=True).numpy(), reference)
    for chunk in (1, 3, 10, 25):
        layer = make(chunk)
        layer.build(x.shape)
        layer.set_weights(whole.get_weights())
        fn = tf.function(lambda v, layer=layer: layer(v, training=False))
        np.testing.assert_allclose(fn(x).numpy(), reference, rtol=1e-6, atol=1e-6)
        graph = fn.get_concrete_function(x).graph.as_graph_def()
        assert any(n.op in ("While", "StatelessWhile") for n in graph.node), chunk
    assert make(3).get_config()["inference_chunk"] == 3
    assert make(None).inference_chunk is None and MaskHead(1, 8).inference_chunk is None
