"""Shared by the ONNX / LiteRT file tests (tests/export): photos that need resizing, the
issue 21 bars (>= 99% of ``model.detect``'s detections matched: same label, box IoU >= 0.98,
score within 1e-3; matched mask IoU >= 0.97; matched keypoints within 0.5 px, apart from
at most 1% at argmax near-ties or heatmap-size flips (``compare_file``)), and a
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


def _keypoint_errors(model, reference, ours, matched, image_shape):
    """Per matched keypoint: distance (px), and whether a distance over the bar has a known
    cause: an argmax near-tie (the two scores, the resized heatmap's maximum, within 1%
    relative) or a heatmap resized to another size (torchvision's decoding resizes it to
    ceil(box side) in network pixels, and a side within float noise of an integer ceils to
    one more or less)."""
    ref = np.stack([reference["keypoints"][i] for i, _ in matched])  # (k, Kp, 3)
    got = np.stack([ours["keypoints"][j] for _, j in matched])
    distance = np.linalg.norm(ref[..., :2] - got[..., :2], axis=-1)  # (k, Kp)
    finite = np.isfinite(ref[..., 2]) & np.isfinite(got[..., 2])
    scale = np.maximum(1.0, np.abs(np.where(finite, ref[..., 2], 1.0)))
    tie = ~finite | (np.abs(np.where(finite, ref[..., 2] - got[..., 2], 0.0)) <= 1e-2 * scale)
    new_h, new_w = (int(v) for v in model.preprocessor.output_size(*image_shape[:2]))
    to_network = np.array([new_w / image_shape[1], new_h / image_shape[0]])  # (x, y) scale

    def map_size(box):  # (ceil(w), ceil(h)) in network pixels
        return tuple(np.ceil(np.maximum((box[2:] - box[:2]) * to_network, 1.0)))

    resized = np.array([map_size(reference["boxes"][i]) != map_size(ours["boxes"][j])
                        for i, j in matched])  # (k,)
    return distance.ravel(), (tie | resized[:, None]).ravel()


def compare_file(model, reference, outputs, photo):
    """A file's ``outputs`` on ``photo`` against ``detect``'s ``reference`` -> figures.

    Masks are compared at the reference's box: the file's mask probabilities pasted by
    ``model.postprocessor`` where ``detect`` pasted its own. A paste box is integer (the
    box expanded by 30/28, truncated), so a box ~1e-4 px off flips a row at an integer
    boundary; the boxes themselves are compared by IoU. Keypoints further apart than 0.5 px
    must have a known cause (``_keypoint_errors``: near-tie or another heatmap size).
    """
    ours = file_detections(model.postprocessor, outputs, photo.shape)
    pairs = det.match_detections(reference, ours)
    matched = [(i, j) for i, j, iou, diff in pairs
               if j >= 0 and iou >= det.DETECTION_IOU and diff <= det.SCORE_TOL]
    figures = {"detections": len(reference["scores"]), "matched": len(matched),
               "pairs": pairs, "labels": set(ours["labels"].tolist())}
    if "masks" in reference and matched:
        sizes = np.array([photo.shape[:2]], np.int32)
        pasted = model.postprocessor.paste_masks(
            np.asarray(outputs["masks"])[:, [j for _, j in matched]],
            reference["boxes"][None, [i for i, _ in matched]], sizes)[0]
        figures["mask_ious"] = [det.mask_iou(reference["masks"][i], np.asarray(m))
                                for (i, _), m in zip(matched, pasted)]
    if "keypoints" in reference and matched:
        figures["keypoint_distance"], figures["keypoint_explained"] = _keypoint_errors(
            model, reference, ours, matched, photo.shape)
    return figures


def check_file(model, photos, references, run, category_ids=None):
    """``run(photo)`` (a file's outputs) against ``detect``'s ``references`` on each photo,
    with the bars of the module docstring (keypoints over 0.5 px: at most 1%, each with a
    known cause); returns the number of matched detections."""
    matched, distances, ties = 0, [], []
    for photo, reference in zip(photos, references):
        outputs = run(photo)
        np.testing.assert_array_equal(outputs["original_sizes"], [photo.shape[:2]])
        figures = compare_file(model, reference, outputs, photo)
        assert figures["detections"] > 0  # detections exist
        assert figures["matched"] >= MATCHED_FRACTION * figures["detections"], figures["pairs"]
        if category_ids is not None:
            assert figures["labels"] <= set(category_ids)  # dataset ids
        if "mask_ious" in figures:
            assert min(figures["mask_ious"]) >= MASK_IOU, figures["mask_ious"]
        if "keypoint_distance" in figures:
            distances.append(figures["keypoint_distance"])
            ties.append(figures["keypoint_explained"])
        matched += figures["matched"]
    if distances:
        distance, tie = np.concatenate(distances), np.concatenate(ties)
        far = distance > KEYPOINT_PIXELS
        assert np.all(tie[far]), distance[far & ~tie]  # every far keypoint has a known cause
        assert far.mean() <= 0.01, far.mean()
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


def calibrate_yolact_(model, photo, seed=0):
    """Spreads a random YOLACT's predictions over ``photo`` (in place): class logits ~
    N(N(0, 1), 3^2) per anchor channel, so that its scores are peaky but not all saturated
    at 1.0 (a random R50 YOLACT scores every detection 0.9999999 and its top 100 are then
    ties), and box deltas ~ N(0, 1) (boxes near their anchors, not collapsed to empty)."""
    rng = np.random.default_rng(seed)
    images, sizes = model.preprocessor(photo[None])
    features = model.fpn(model.backbone(model.preprocessor.normalize(images, sizes)))
    head = model.prediction_head
    outputs = head(features)  # each (1, N, D), N = sum H_l W_l A
    for name, std in (("class_logits", 3.0), ("box_deltas", 1.0)):
        values = outputs[name].numpy()
        per_channel = values.reshape(-1, head.num_anchors * values.shape[-1])  # (N / A, A D)
        mean = rng.standard_normal(per_channel.shape[1]).astype(np.float32)
        _standardise(head.predictors[name], per_channel, std,
                     mean if name == "class_logits" else 0.0 * mean)
    model._drop_detect_fn()
