"""Shared by the ONNX / LiteRT file tests (tests/export): photos that need resizing, the
issue 21 bars (>= 99% of ``model.detect``'s detections matched: same label, box IoU >= 0.98,
score within 1e-3; matched mask IoU >= 0.97; matched keypoints within 0.5 px), and a
calibration of a tiny random Mask R-CNN whose outputs are spread like a trained model's
(peaky scores, masks and heatmaps away from their decision ties), so that the comparison
measures the exported graph rather than near-ties of an untrained one."""
import keras
import numpy as np
import pytest

from keras_maskrcnn.export.runtimes import file_detections
from keras_maskrcnn.ops.anchors import level_sizes
from support import detections as det

MATCHED_FRACTION, MASK_IOU, KEYPOINT_PIXELS = 0.99, 0.97, 0.5
CROPS = {"astronaut": (300, 260), "coffee": (200, 300), "chelsea": (151, 226)}  # (H0, W0)


def photos():
    skdata = pytest.importorskip("skimage.data", reason="scikit-image gives the photos")
    return [getattr(skdata, name)()[:h, :w, :3].copy() for name, (h, w) in CROPS.items()]


def assert_matches_detect(reference, ours):
    """``ours`` (a file's detections as ``detect`` returns them) against ``reference``."""
    assert len(reference["scores"]) > 0  # detections exist
    pairs = det.match_detections(reference, ours)
    matched = [(i, j) for i, j, iou, diff in pairs
               if j >= 0 and iou >= det.DETECTION_IOU and diff <= det.SCORE_TOL]
    assert len(matched) >= MATCHED_FRACTION * len(reference["scores"]), pairs
    if "masks" in reference:
        ious = [det.mask_iou(reference["masks"][i], ours["masks"][j]) for i, j in matched]
        assert min(ious) >= MASK_IOU, ious
    if "keypoints" in reference:
        for i, j in matched:
            error = np.abs(reference["keypoints"][i, :, :2] - ours["keypoints"][j, :, :2])
            assert error.max() <= KEYPOINT_PIXELS, (i, j, error.max())
    return len(matched)


def check_file(model, photos, references, run, category_ids=None):
    """``run(photo)`` (a file's outputs) against ``detect``'s ``references`` on each photo;
    returns the number of matched detections."""
    matched = 0
    for photo, reference in zip(photos, references):
        outputs = run(photo)
        np.testing.assert_array_equal(outputs["original_sizes"], [photo.shape[:2]])
        ours = file_detections(model.postprocessor, outputs, photo.shape)
        if category_ids is not None:
            assert set(ours["labels"].tolist()) <= set(category_ids)  # dataset ids
        matched += assert_matches_detect(reference, ours)
    return matched


def _standardise(layer, outputs, std, mean):
    """Rescales a conv / dense ``layer`` so that its outputs (N, C) get per-channel ``std``
    and ``mean`` (C,) (its random direction kept)."""
    kernel, bias = layer.get_weights()
    scale = std / (outputs.std(0) + 1e-6)  # (C,)
    if isinstance(layer, keras.layers.Conv2DTranspose):  # kernel (h, w, C, C_in)
        scale_kernel = scale[:, None]
    else:
        scale_kernel = scale
    layer.set_weights([kernel * scale_kernel, ((bias - outputs.mean(0)) * scale + mean)
                       .astype(np.float32)])


def calibrate_maskrcnn_(model, photo, seed=0):
    """Spreads a random Mask R-CNN's predictors over ``photo`` (in place): RPN objectness
    logits ~ N(-4, 2^2), class logits ~ N(N(0, 1), 3^2) per class, mask and keypoint logits
    ~ N(0, 3^2) per channel."""
    rng = np.random.default_rng(seed)
    images, sizes = model.preprocessor(photo[None])
    features = model.extract_features(images, sizes)
    head = model.rpn_head
    logits, _ = head(features)  # (1, N): levels of H_l x W_l x A logits
    objectness = logits.numpy().reshape(-1, model.num_anchors)  # (N / A, A)
    _standardise(head.predictors["objectness"], objectness, 2.0, -4.0)
    logits, deltas = head(features)
    proposals = model.proposal_generator(
        logits, deltas, model.anchors(images, features),
        level_sizes(features, model.num_anchors), sizes, training=False)["proposals"]
    hidden = model.box_head(model.box_pooler(features, proposals))[0].numpy()  # (P, F)
    predictor = model.box_predictor.cls_score
    _standardise(predictor, predictor(hidden).numpy(), 3.0,
                 rng.standard_normal(model.num_classes).astype(np.float32))
    for predict, layer in ((model.mask_logits, getattr(model.mask_predictor, "mask_fcn_logits",
                                                       None)),
                           (model.keypoint_logits, getattr(model.keypoint_predictor,
                                                           "kps_score_lowres", None))):
        if layer is None:
            continue
        out = predict(features, proposals).numpy()  # (1, P, S, S, C)
        _standardise(layer, out.reshape(-1, out.shape[-1]), 3.0, 0.0)
    model._drop_detect_fn()
