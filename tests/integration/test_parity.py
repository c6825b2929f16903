"""End-to-end parity with torchvision: randomised torchvision models, converted, run side by side.

Shape shorthand: n detections (torchvision's), m detections (ours), H0 x W0 original image,
Hp x Wp padded input, P proposals, Kp keypoints.

Each torchvision model (``maskrcnn_resnet50_fpn``; ``keypointrcnn_resnet50_fpn`` and
``fasterrcnn_resnet50_fpn`` are marked slow) is built with ``torch.manual_seed(SEED)``,
``weights=None``, then randomised in place, deterministically (a seeded torch.Generator), so
that every stage runs away from its initial values and activations stay O(1):
    * every conv / linear bias ~ N(0, 0.1);
    * every backbone BatchNorm (weights and buffers): running_mean / running_var are the
      per-channel statistics of its input over the three photos, perturbed (mean + 0.3 std
      N(0, 1), var x U(0.5, 2)); weight +-U(0.5, 1.5) (x 0.3 on the last BN of a bottleneck,
      so the residual stream keeps its scale), bias ~ N(0, 0.3). FPN feature std stays in
      [0.1, 10] (asserted; measured 0.7 .. 2.7);
    * the predictors are rescaled (their seeded random directions kept) so that over the
      photos: RPN objectness logits ~ N(-4, 2^2) (peaky, never saturating the sigmoid to 1.0,
      which would tie the NMS order), RPN deltas std 0.3, class logits ~ N(N(0, 1), 3^2) per
      class (>= 10 distinct labels per photo, asserted), raw box deltas std 1.5.
With ``weights_backbone=None`` torchvision builds its ResNet with ``nn.BatchNorm2d`` instead
of ``FrozenBatchNorm2d``; in eval mode both compute the same affine map of the same four
buffers (eps 1e-5), and the state_dict also carries ``num_batches_tracked`` (skipped by the
converter). ``model.backbone.bn_eps`` is set to 1e-5 here (the converter's "trained" weights,
also what its "auto" picks for these file names; torchvision's released COCO_V1 files run
with eps 0, ``overwrite_eps``): the reference is built with random weights, not loaded from
COCO_V1.

Image sizes: to keep CPU time sane both sides use min_size 320 / max_size 512 (torchvision's
``min_size`` / ``max_size``, our ``input.min_size_test`` / ``input.max_size``) instead of
800 / 1333; the code path is the same at any size. Both use a 0.01 box score threshold
(``box_score_thresh``, our ``model.roi_heads.score_threshold``) so every photo gives 100
(>= 50 asserted) diverse detections.

Photos (skimage.data): coffee 400x600 (downscaled to 320x480), chelsea 300x451 (upscaled to
320x481) and a portrait crop of astronaut, 480x280 (scale set by max_size: 512x298).

Stages compared per photo: preprocessing (our ``model.preprocessor`` + normalisation vs
torchvision's transform output), backbone + FPN (on torchvision's own tensor, first photo,
and through our preprocessing), RPN proposals (our ``proposal_generator`` vs ``model.rpn``),
final detections (``model.detect`` vs torchvision's eval forward, original pixels), masks
(``detect``'s thresholded masks vs torchvision's ``masks > 0.5``) and keypoints.

Bars (the issue's): preprocessing max abs error <= 1e-4 (normalised units) and features
relative error <= 1e-4; RPN proposals >= 99% matched at IoU >= 0.99; final detections >= 95%
matched (greedy, same label, IoU >= 0.98, |score diff| <= 1e-3); matched masks IoU >= 0.95;
matched keypoints within 1 pixel. Two torchvision discontinuities are handled explicitly
(see ``compare_masks`` and ``compare_keypoints``): the int truncation of the mask paste box
and keypoint heatmap argmax near-ties. The measured figures are printed (``pytest -s``).
"""
import re

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn.ops.anchors import level_sizes
from support.detections import (DETECTION_FRACTION, DETECTION_IOU, MASK_IOU, SCORE_TOL,
                                pairwise_iou, mask_iou, match_detections, relative_error)

SEED = 0
MIN_SIZE, MAX_SIZE = 320, 512
SCORE_THRESHOLD = 0.01
OVERRIDES = (f"input.min_size_test={MIN_SIZE}", f"input.max_size={MAX_SIZE}",
             f"input.min_size_train=[{MIN_SIZE}]",
             f"model.roi_heads.score_threshold={SCORE_THRESHOLD}",
             "model.backbone.bn_eps=1e-5")  # the reference is built, not loaded: eps 1e-5
FEATURE_RTOL = 1e-4
PROPOSAL_IOU, PROPOSAL_FRACTION = 0.99, 0.99
KEYPOINT_PIXELS = 1.0
MIN_DETECTIONS = 50
LEVELS = {"0": "P2", "1": "P3", "2": "P4", "3": "P5", "pool": "P6"}  # torchvision -> ours


def photos():
    """Three real photos of different sizes and aspect ratios, (H0, W0, 3) uint8."""
    skimage = pytest.importorskip("skimage.data", reason="scikit-image ships the photos")
    return {"coffee": skimage.coffee(), "chelsea": skimage.chelsea(),
            "astronaut_portrait": np.ascontiguousarray(skimage.astronaut()[:480, 96:376])}


def to_chw(torch, image):
    """(H0, W0, 3) uint8 -> (3, H0, W0) float in [0, 1], torchvision's input."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


# ------------------------------------------------------------------ randomised torchvision model
def randomise_(torch, model, calibration_images, seed=SEED):
    """Randomises biases, BN buffers and predictor scales in place (see module docstring)."""
    g = torch.Generator().manual_seed(seed)

    def normal(n, std):
        return torch.randn(n, generator=g) * std

    def uniform(n, lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    from torchvision.ops.misc import FrozenBatchNorm2d
    bn_types = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    layers = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)

    def calibrate(name):
        def hook(module, args):
            x = args[0]
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3)) + 1e-3  # per channel
            c = mean.numel()
            gain = 0.3 if name.endswith("bn3") else 1.0
            module.running_mean.copy_(mean + 0.3 * var.sqrt() * normal(c, 1.0))
            module.running_var.copy_(var * uniform(c, 0.5, 2.0))
            module.weight.copy_(gain * uniform(c, 0.5, 1.5) * torch.sign(normal(c, 1.0)))
            module.bias.copy_(normal(c, 0.3 * gain))
        return hook

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, layers) and module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.1))
        hooks = [m.register_forward_pre_hook(calibrate(n))
                 for n, m in model.backbone.body.named_modules() if isinstance(m, bn_types)]
        images, _ = model.transform(calibration_images)  # one padded batch
        features = model.backbone(images.tensors)  # BN set just before use: final features
        for h in hooks:
            h.remove()
        calibrate_predictors_(torch, model, images, features, normal)
    return model


def standardise_(layer, outputs, std, mean):
    """Rescales a conv / linear layer in place: its outputs (R, C) get per-channel ``std``
    and ``mean`` (C,) (the layer keeps its seeded random direction)."""
    scale = std / (outputs.std(0) + 1e-6)  # (C,)
    layer.weight.mul_(scale.reshape(-1, *[1] * (layer.weight.dim() - 1)))
    layer.bias.copy_((layer.bias - outputs.mean(0)) * scale + mean)


def calibrate_predictors_(torch, model, images, features, normal):
    """Sets the spread of the predictors' outputs over the calibration photo.

    RPN objectness logits ~ N(-4 + N(0, 0.5), 2^2) per anchor channel: peaky but never
    saturated (a sigmoid that rounds to 1.0 in float32 ties the NMS order); RPN deltas
    ~ N(N(0, 0.1), 0.3^2). Box predictor: class logits ~ N(N(0, 1), 3^2) per class over the
    RoIs, so every class wins somewhere (many distinct labels, peaky scores); raw box deltas
    ~ N(N(0, 0.3), 1.5^2) (0.15 / 0.3 after the (10, 10, 5, 5) weights).
    """
    head = model.rpn.head
    objectness, deltas = head(list(features.values()))  # per level (1, A, H, W), (1, 4A, H, W)
    objectness = torch.cat([o.permute(0, 2, 3, 1).flatten(0, 2) for o in objectness])  # (N, A)
    deltas = torch.cat([d.permute(0, 2, 3, 1).flatten(0, 2) for d in deltas])  # (N, 4A)
    standardise_(head.cls_logits, objectness, 2.0, -4.0 + normal(objectness.shape[1], 0.5))
    standardise_(head.bbox_pred, deltas, 0.3, normal(deltas.shape[1], 0.1))
    proposals, _ = model.rpn(images, features)
    proposals = [p[:300] for p in proposals]  # the best 300 per photo suffice (CPU time)
    pooled = model.roi_heads.box_roi_pool(features, proposals, images.image_sizes)
    hidden = model.roi_heads.box_head(pooled)  # (R, 1024)
    predictor = model.roi_heads.box_predictor
    logits = predictor.cls_score(hidden)  # (R, K)
    standardise_(predictor.cls_score, logits, 3.0, normal(logits.shape[1], 1.0))
    box_deltas = predictor.bbox_pred(hidden)  # (R, 4K)
    standardise_(predictor.bbox_pred, box_deltas, 1.5, normal(box_deltas.shape[1], 0.3))


def torchvision_model(torch, torchvision, arch, calibration_images):
    torch.manual_seed(SEED)
    kwargs = dict(weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE,
                  box_score_thresh=SCORE_THRESHOLD)
    if not arch.startswith("keypoint"):
        kwargs["num_classes"] = 91
    model = getattr(torchvision.models.detection, arch)(**kwargs).eval()
    return randomise_(torch, model, [to_chw(torch, image) for image in calibration_images])


# --------------------------------------------------------------------------------- running
def run_torchvision(torch, model, image):
    """One torchvision forward, capturing its transform, backbone and RPN outputs."""
    captured = {}
    hooks = [model.transform.register_forward_hook(
                 lambda m, i, o: captured.__setitem__("transform", o[0])),
             model.backbone.register_forward_hook(
                 lambda m, i, o: captured.__setitem__("features", o)),
             model.rpn.register_forward_hook(
                 lambda m, i, o: captured.__setitem__("proposals", o[0][0]))]
    heads = model.roi_heads
    if getattr(heads, "mask_predictor", None) is not None:
        hooks.append(heads.mask_predictor.register_forward_hook(
            lambda m, i, o: captured.__setitem__("mask_logits", o)))
    if getattr(heads, "keypoint_predictor", None) is not None:
        hooks += [heads.keypoint_predictor.register_forward_hook(
                      lambda m, i, o: captured.__setitem__("heatmaps", o)),
                  heads.keypoint_roi_pool.register_forward_pre_hook(
                      lambda m, i: captured.__setitem__("keypoint_boxes", i[1][0]))]
    try:
        with torch.no_grad():
            detections = model([to_chw(torch, image)])[0]
    finally:
        for h in hooks:
            h.remove()
    out = {"images": captured["transform"].tensors[0].permute(1, 2, 0).numpy(),  # (Hp, Wp, 3)
           "image_size": tuple(captured["transform"].image_sizes[0]),
           "features": {LEVELS[k]: v[0].permute(1, 2, 0).numpy()
                        for k, v in captured["features"].items()},  # NCHW -> (H, W, C)
           "proposals": captured["proposals"].numpy()}
    out["original_size"] = image.shape[:2]
    out["boxes"] = detections["boxes"].numpy()
    out["scores"] = detections["scores"].numpy()
    out["labels"] = detections["labels"].numpy()
    if "masks" in detections:
        out["masks"] = detections["masks"][:, 0].numpy() > 0.5  # (n, H0, W0)
        logits = captured["mask_logits"]  # (n, K, 28, 28), one row per detection
        out["mask_probs"] = logits[torch.arange(len(logits)), detections["labels"]].sigmoid()
    if "keypoints" in detections:
        out["keypoints"] = detections["keypoints"][..., :2].numpy()  # (n, Kp, 2)
        out["keypoint_scores"] = detections["keypoints_scores"].numpy()
        out["heatmaps"] = captured["heatmaps"]  # (n, Kp, 56, 56) logits, one row per detection
        out["keypoint_boxes"] = captured["keypoint_boxes"]  # (n, 4) in network-input pixels
    return out


def our_features(model, image):
    """(H0, W0, 3) uint8 -> our preprocessed batch and FPN features, as ``detect`` does."""
    images, image_sizes = model.preprocessor(tf.constant(image)[None])  # (1, Hp, Wp, 3)
    return images, image_sizes, model.extract_features(images, image_sizes)


def run_ours(model, image, reference_images=None):
    """Our preprocessing, features, proposals and ``detect``; with ``reference_images`` (Hp, Wp,
    3), also our backbone + FPN on torchvision's own normalised, padded tensor."""
    s = model.preprocessor
    images, image_sizes, features = our_features(model, image)
    mean = np.asarray(s.pixel_mean, np.float32) * 255.0
    std = np.asarray(s.pixel_std, np.float32) * 255.0
    normalised = (images[0].numpy() - mean) / std
    h, w = image_sizes[0].numpy()
    normalised[h:], normalised[:, w:] = 0.0, 0.0  # zero padding, as extract_features
    logits, deltas = model.rpn_head(features)  # (1, N), (1, N, 4)
    proposals = model.proposal_generator(
        logits, deltas, model.anchors(images, features),
        level_sizes(features, model.num_anchors), image_sizes, training=False)
    num = int(tf.reduce_sum(tf.cast(proposals["valid"][0], tf.int32)))
    out = {"images": normalised, "image_size": (int(h), int(w)),
           "features": {k: v[0].numpy() for k, v in features.items()},
           "proposals": proposals["proposals"][0, :num].numpy()}
    if reference_images is not None:
        from_reference = model.fpn(model.backbone(tf.constant(reference_images[None])))
        out["features_from_reference"] = {k: from_reference[k][0].numpy() for k in features}
    detections = model.detect([image])[0]
    out.update({k: detections[k] for k in ("boxes", "scores", "labels")})
    if "masks" in detections:
        out["masks"] = detections["masks"]
    if "keypoints" in detections:
        out["keypoints"] = detections["keypoints"][..., :2]
        out["keypoint_scores"] = detections["keypoints"][..., 2]
    return out


# ------------------------------------------------------------------------------- comparing
def match_proposals(reference, ours):
    """Fraction of reference proposals whose best-IoU proposal of ours has IoU >= the bar."""
    best = pairwise_iou(reference, ours).max(axis=1) if len(ours) else np.zeros(len(reference))
    return float(np.mean(best >= PROPOSAL_IOU)), best


def compare_masks(reference, ours, pairs):
    """Mask IoUs of matched pairs, (i, j, ...) = (torchvision index, our index, ...).

    torchvision pastes a mask into the box expanded by 30/28 and truncated to int pixels
    (``paste_masks_in_image``): a coordinate within float noise of an integer may truncate
    differently on the two sides (our box differs by ~1e-4 px), and the pasted mask then has
    a one-pixel different size. So a pair is checked against torchvision's own mask where the
    integer paste boxes agree, else against torchvision's 28x28 probabilities pasted by
    torchvision at OUR box (that isolates the mask head and our paste; reported for every
    pair as ``worst_mask_iou_at_our_box``).
    """
    import torch
    from torchvision.models.detection.roi_heads import expand_boxes, paste_masks_in_image

    i = [p[0] for p in pairs]
    j = [p[1] for p in pairs]
    height, width = reference["masks"].shape[1:]
    our_boxes = torch.from_numpy(np.asarray(ours["boxes"][j], np.float32)).reshape(-1, 4)
    reference_boxes = torch.from_numpy(reference["boxes"][i]).reshape(-1, 4)
    at_ours = paste_masks_in_image(reference["mask_probs"][i][:, None], our_boxes,
                                   (height, width))[:, 0].numpy() > 0.5  # (k, H0, W0)
    same_box = (expand_boxes(our_boxes, 30 / 28).long()
                == expand_boxes(reference_boxes, 30 / 28).long()).all(1).numpy()  # (k,)
    own = np.array([mask_iou(reference["masks"][a], ours["masks"][b]) for a, b in zip(i, j)])
    at_box = np.array([mask_iou(m, ours["masks"][b]) for m, b in zip(at_ours, j)])
    return {"worst_mask_iou": float(np.where(same_box, own, at_box).min(initial=1.0)),
            "mean_mask_iou": float(own.mean()) if len(own) else 1.0,
            "paste_box_differs": int((~same_box).sum()),
            "worst_mask_iou_where_paste_box_differs": float(own[~same_box].min(initial=1.0)),
            "worst_mask_iou_at_our_box": float(at_box.min(initial=1.0))}


def compare_keypoints(reference, ours, pairs):
    """Keypoint distances (original pixels) of matched pairs (i, j, ...).

    torchvision's ``heatmaps_to_keypoints`` resizes each heatmap to ceil(w) x ceil(h) of the
    box in network-input pixels and takes the argmax. Two discontinuities follow, handled
    explicitly:
        * a box side within float noise of an integer may ceil differently on the two sides
          (the maps then differ by one row / column). Those pairs are checked against
          torchvision's decoding of its own heatmaps at OUR box (isolates the keypoint head
          and our decoding; reported for every pair as ``max_keypoint_dist_at_our_box``),
          the others against torchvision's output;
        * argmax near-ties: when the two best cells are equal within float noise the argmax
          may pick the neighbouring cell, one input pixel away (1.25 original pixels on a
          photo downscaled by 0.8): distance <= one input-pixel diagonal and scores equal
          within 1e-4 relative. Counted apart from the 1-pixel bar.
    """
    import torch
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints
    from torchvision.models.detection.transform import resize_boxes, resize_keypoints

    if not pairs:
        return {"max_keypoint_dist": 0.0, "max_keypoint_dist_at_our_box": 0.0,
                "keypoints_within_1px": 1.0, "argmax_near_ties": 0, "box_ceil_differs": 0}
    i = [p[0] for p in pairs]
    j = [p[1] for p in pairs]
    original, resized = list(reference["original_size"]), list(reference["image_size"])
    our_boxes = resize_boxes(torch.from_numpy(np.asarray(ours["boxes"][j], np.float32)),
                             original, resized)  # (k, 4) network-input pixels
    decoded, scores_at_ours = heatmaps_to_keypoints(reference["heatmaps"][i], our_boxes)
    at_our_box = resize_keypoints(decoded, resized, original)[..., :2].numpy()

    def ceil_sizes(boxes):
        sizes = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1).ceil()  # (k, 2) map w, h
        return sizes.numpy()

    same_ceil = (ceil_sizes(our_boxes) == ceil_sizes(reference["keypoint_boxes"][i])).all(1)
    ratio = np.asarray(original, np.float64) / np.asarray(resized, np.float64)  # (h, w)
    score_ref, score_ours = reference["keypoint_scores"][i], ours["keypoint_scores"][j]

    def distances(target, target_scores):  # (k, Kp, 2), (k, Kp) -> (k, Kp) each
        delta = target - ours["keypoints"][j]  # (k, Kp, 2) x, y
        dist = np.linalg.norm(delta, axis=-1)  # original pixels
        one_cell = np.linalg.norm(delta / ratio[::-1], axis=-1) <= np.sqrt(2) + 1e-3
        near = np.abs(target_scores - score_ours) <= 1e-4 * np.maximum(1, np.abs(score_ours))
        return dist, (dist > KEYPOINT_PIXELS) & one_cell & near

    dist, tie = distances(reference["keypoints"][i], score_ref)
    dist_at_ours, tie_at_ours = distances(at_our_box, scores_at_ours.numpy())
    checked = np.where(same_ceil[:, None], dist, dist_at_ours)  # (k, Kp)
    checked_tie = np.where(same_ceil[:, None], tie, tie_at_ours)
    return {"max_keypoint_dist": float(checked[~checked_tie].max(initial=0.0)),
            "max_keypoint_dist_at_our_box": float(dist_at_ours[~tie_at_ours].max(initial=0.0)),
            "keypoints_within_1px": float(np.mean(dist <= KEYPOINT_PIXELS)),
            "argmax_near_ties": int(checked_tie.sum()),
            "box_ceil_differs": int((~same_ceil).sum()), "keypoint_count": int(dist.size),
            "max_keypoint_score_diff": float(np.abs(score_ref - score_ours).max())}


def compare(name, reference, ours, verbose=True):
    """All the figures for one photo; prints them (``verbose``) and returns a dict."""
    h, w = reference["image_size"]
    r = {"photo": name}
    r["preprocess_max_abs"] = float(np.abs(ours["images"] - reference["images"]).max()) \
        if ours["images"].shape == reference["images"].shape else np.inf
    r["image_size_equal"] = ours["image_size"] == (int(h), int(w))
    r["feature_rel_err"] = max(relative_error(ours["features"][k], reference["features"][k])
                               for k in reference["features"])
    if "features_from_reference" in ours:  # the backbone alone, on torchvision's tensor
        r["backbone_rel_err"] = max(
            relative_error(ours["features_from_reference"][k], reference["features"][k])
            for k in reference["features"])
    r["feature_std"] = {k: float(v.std()) for k, v in reference["features"].items()}
    r["proposals"] = (len(reference["proposals"]), len(ours["proposals"]))
    r["proposal_matched"], best = match_proposals(reference["proposals"], ours["proposals"])
    r["proposal_worst_iou"] = float(best.min()) if len(best) else 1.0
    pairs = match_detections(reference, ours)
    ok = [(i, j, iou, d) for i, j, iou, d in pairs if iou >= DETECTION_IOU and d <= SCORE_TOL]
    r["detections"] = (len(reference["boxes"]), len(ours["boxes"]))
    r["distinct_labels"] = len(np.unique(reference["labels"]))
    r["detection_matched"] = len(ok) / max(len(pairs), 1)
    r["worst_box_iou"] = min((p[2] for p in ok), default=1.0)
    r["max_score_diff"] = max((p[3] for p in ok), default=0.0)
    if "masks" in reference:
        r.update(compare_masks(reference, ours, ok))
    if "keypoints" in reference:
        r.update(compare_keypoints(reference, ours, ok))
    if verbose:
        print(f"\n[parity] {name}: " + ", ".join(
            f"{k}={format_value(v)}" for k, v in r.items() if k != "photo"))
    return r


def format_value(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def run_parity(torch, torchvision, arch):
    from keras_maskrcnn.convert.torchvision_models import from_torchvision
    images = photos()
    reference_model = torchvision_model(torch, torchvision, arch, list(images.values()))
    state_dict = reference_model.state_dict()
    model = from_torchvision(state_dict, arch, overrides=OVERRIDES)
    results, detections = [], {}
    for index, (name, image) in enumerate(images.items()):
        reference = run_torchvision(torch, reference_model, image)
        ours = run_ours(model, image, reference["images"] if index == 0 else None)
        results.append(compare(f"{arch}/{name}", reference, ours))
        if index == 0:
            first = (name, reference, ours)
        detections[name] = {k: ours[k] for k in ("boxes", "scores", "labels", "masks",
                                                 "keypoints") if k in ours}
    return {"results": results, "model": model, "state_dict": state_dict,
            "detections": detections, "first": first}


def check_bars(results, masks=False, keypoints=False):
    for r in results:
        name = r["photo"]
        assert r["image_size_equal"], name
        assert r["preprocess_max_abs"] <= 1e-4, (name, r["preprocess_max_abs"])
        assert r.get("backbone_rel_err", 0.0) <= FEATURE_RTOL, (name, r)
        assert r["feature_rel_err"] <= FEATURE_RTOL, (name, r["feature_rel_err"])
        assert all(0.1 <= s <= 10 for s in r["feature_std"].values()), (name, r["feature_std"])
        assert r["proposal_matched"] >= PROPOSAL_FRACTION, (name, r["proposal_matched"])
        assert r["proposals"][0] >= 500, (name, r["proposals"])
        assert r["detections"][0] >= MIN_DETECTIONS, (name, r["detections"])
        assert r["detection_matched"] >= DETECTION_FRACTION, (name, r["detection_matched"])
        if masks:
            assert r["worst_mask_iou"] >= MASK_IOU, (name, r)
            assert r["paste_box_differs"] <= 0.05 * r["detections"][0], (name, r)
        if keypoints:
            assert r["max_keypoint_dist"] <= KEYPOINT_PIXELS, (name, r)
            assert r["keypoints_within_1px"] >= 0.99, (name, r)
            assert r["argmax_near_ties"] <= 0.005 * r["keypoint_count"], (name, r)
            assert r["box_ceil_differs"] <= 0.05 * r["detections"][0], (name, r)


# ----------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def maskrcnn():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    return run_parity(torch, torchvision, "maskrcnn_resnet50_fpn")


def test_maskrcnn_parity(maskrcnn):
    results = maskrcnn["results"]
    check_bars(results, masks=True)
    assert all(r["distinct_labels"] >= 10 for r in results), [r["distinct_labels"]
                                                             for r in results]


def test_the_checks_catch_mutations(maskrcnn):
    """Each bar fails when our side is perturbed by a small, plausible bug."""
    name, reference, ours = maskrcnn["first"]

    def check(**changes):
        return compare(f"mutated {'/'.join(changes)}", reference, {**ours, **changes},
                       verbose=False)

    assert check(scores=ours["scores"] + 2e-3)["detection_matched"] == 0.0
    assert check(labels=ours["labels"] % 90 + 1)["detection_matched"] < 0.1
    centre = (ours["boxes"][:, :2] + ours["boxes"][:, 2:]) / 2
    grown = np.concatenate([centre + (ours["boxes"][:, :2] - centre) * 1.02,
                            centre + (ours["boxes"][:, 2:] - centre) * 1.02], axis=1)
    assert check(boxes=grown)["detection_matched"] < DETECTION_FRACTION  # IoU 0.96
    assert check(masks=np.roll(ours["masks"], 2, axis=2))["worst_mask_iou"] < MASK_IOU
    shifted = ours["proposals"] + np.float32([1, 1, 1, 1])  # one pixel down-right
    assert check(proposals=shifted)["proposal_matched"] < PROPOSAL_FRACTION
    # A real model bug: one frozen BN of layer3 with its variance 2% off.
    model = maskrcnn["model"]
    variance = model.backbone.stages[2][1].bn2.moving_variance
    original = variance.numpy()
    try:
        variance.assign(original * 1.02)
        features = our_features(model, photos()[name])[2]
    finally:
        variance.assign(original)
    error = max(relative_error(features[k][0], reference["features"][k])
                for k in reference["features"])
    print(f"[parity] mutated BN variance x 1.02: feature_rel_err={error}")
    assert error > FEATURE_RTOL


@pytest.mark.slow
def test_keypointrcnn_parity(torch, torchvision):
    results = run_parity(torch, torchvision, "keypointrcnn_resnet50_fpn")["results"]
    check_bars(results, keypoints=True)


@pytest.mark.slow
def test_fasterrcnn_parity(torch, torchvision):
    results = run_parity(torch, torchvision, "fasterrcnn_resnet50_fpn")["results"]
    check_bars(results)
    assert all(r["distinct_labels"] >= 10 for r in results), [r["distinct_labels"]
                                                             for r in results]


# ---------------------------------------------------------------------------------- the CLI
def convert_cli(checkpoint, output, arch="maskrcnn_resnet50_fpn"):
    """``python -m keras_maskrcnn.convert torchvision ...`` (its ``main``, in this process)."""
    from keras_maskrcnn.convert.__main__ import main
    argv = ["torchvision", "--arch", arch, "--checkpoint", str(checkpoint),
            "--output", str(output)]
    for override in OVERRIDES:
        argv += ["--set", override]
    main(argv)


def test_cli_conversion_round_trip(maskrcnn, tmp_path, torch):
    """A saved random state_dict -> CLI -> config.yaml + weights -> the same detections."""
    from keras_maskrcnn import build_model, load_config
    checkpoint = tmp_path / "maskrcnn_random.pth"
    torch.save(maskrcnn["state_dict"], checkpoint)
    convert_cli(checkpoint, tmp_path / "converted")
    loaded = build_model(load_config(str(tmp_path / "converted" / "config.yaml")))
    loaded.load_weights(str(tmp_path / "converted" / "model.weights.h5"))
    assert loaded.config_dict == maskrcnn["model"].config_dict
    assert len(loaded.weights) == len(maskrcnn["model"].weights)
    for got, expected in zip(loaded.weights, maskrcnn["model"].weights):
        path = expected.path.split("/", 1)[1]  # without the model's own name
        assert got.path.split("/", 1)[1] == path
        np.testing.assert_array_equal(got.numpy(), expected.numpy(), err_msg=path)
    name = "chelsea"
    result = loaded.detect([photos()[name]])[0]
    reference = maskrcnn["detections"][name]
    assert len(result["boxes"]) == len(reference["boxes"]) >= MIN_DETECTIONS
    for key in ("boxes", "scores", "labels", "masks"):
        np.testing.assert_allclose(result[key], reference[key], rtol=0, atol=1e-6, err_msg=key)


_NO_TORCH_CLI = """
import sys
sys.modules["torch"] = None  # from here on, importing torch fails
from keras_maskrcnn.convert.__main__ import main
main(sys.argv[1:])
assert sys.modules["torch"] is None
"""


def test_cli_converts_without_torch(maskrcnn, tmp_path, torch):
    """The CLI in a process where importing torch fails writes the weights of the torch path."""
    import subprocess
    import sys
    checkpoint = tmp_path / "maskrcnn_random.pth"
    torch.save(maskrcnn["state_dict"], checkpoint)
    argv = ["torchvision", "--arch", "maskrcnn_resnet50_fpn", "--checkpoint", str(checkpoint),
            "--output", str(tmp_path / "converted")]
    for override in OVERRIDES:
        argv += ["--set", override]
    run = subprocess.run([sys.executable, "-c", _NO_TORCH_CLI, *argv], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    model = maskrcnn["model"]
    weights = {w.path.split("/", 1)[1]: w.numpy() for w in model.weights}
    model.load_weights(str(tmp_path / "converted" / "model.weights.h5"))
    try:
        for w in model.weights:
            path = w.path.split("/", 1)[1]
            np.testing.assert_array_equal(w.numpy(), weights[path], err_msg=path)
    finally:
        for w in model.weights:
            w.assign(weights[w.path.split("/", 1)[1]])


def test_cli_errors_name_the_problem(maskrcnn, tmp_path, torch):
    state = maskrcnn["state_dict"]

    def convert(mutated, arch="fasterrcnn_resnet50_fpn"):
        path = tmp_path / "mutated.pth"
        torch.save(mutated, path)
        convert_cli(path, tmp_path / "out", arch=arch)

    # Mask R-CNN without its mask head is a Faster R-CNN checkpoint (cheaper to build).
    faster = {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_")}
    with pytest.raises(ValueError, match="looks like 'fasterrcnn_resnet50_fpn'.*not "
                                         "'maskrcnn_resnet50_fpn'"):
        convert(faster, arch="maskrcnn_resnet50_fpn")
    with pytest.raises(ValueError, match="looks like 'maskrcnn_resnet50_fpn'.*not "
                                         "'keypointrcnn_resnet50_fpn'"):
        convert(state, arch="keypointrcnn_resnet50_fpn")
    key = "backbone.body.layer2.0.conv1.weight"
    with pytest.raises(KeyError, match=re.escape(f"missing key in state_dict: '{key}'")):
        convert({k: v for k, v in faster.items() if k != key})
    key = "rpn.head.cls_logits.weight"
    with pytest.raises(ValueError, match=re.escape(f"shape mismatch for '{key}'")):
        convert({**faster, key: faster[key][:2]})
    assert not (tmp_path / "out" / "model.weights.h5").exists()
