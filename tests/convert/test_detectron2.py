"""detectron2 model-zoo import: a detectron2 oracle built from torchvision pieces (support.
d2_oracle, seeded random weights randomised as tests/integration/test_parity.py's), written as a
detectron2 ``.pkl`` (support.d2_layout), converted with our CLI, run side by side on photos
whose size needs resizing (one shrunk, one enlarged), compared with the torchvision parity
test's bars (support.detections, test_parity's ``compare`` / ``check_bars``). The oracle gets
detectron2's test-time resize done outside it (``ResizeShortestEdge``'s size rule, PIL's
bilinear resize; its own transform is then the identity) and its detections mapped back as
``detector_postprocess`` (boxes scaled per axis and clipped, empty ones dropped, masks pasted
at the original size, keypoints scaled); ours run ``detect`` on the original photo, so the
compared preprocessed images check our Pillow-exact resize too. The real detectron2 is
compared in tests/reference.

Cases: R50-FPN, R50-C4 and X101-32x8d-FPN (smaller photos) Mask R-CNN with 20 classes, and
Keypoint R-CNN R50-FPN (converted in a process where importing torch fails); the C4 and X101
cases are marked slow. Masks are compared as detectron2 pastes them (support.d2_masks),
keypoints as its predictor decodes them (support.d2_keypoints; no COCO offset: that belongs to
COCO results only). The measured figures
are printed (``pytest -s``).

Shape shorthand: n oracle detections, m ours, H0 x W0 photo, Kp keypoints.
"""
import re
import subprocess
import sys

import numpy as np
import pytest

from integration.test_parity import (SCORE_THRESHOLD, check_bars, compare, photos, randomise_,
                                     run_ours)
from support.detections import mask_iou

MAX_SIZE = 512
LEVELS = {"0": "P2", "1": "P3", "2": "P4", "3": "P5", "pool": "P6"}  # torchvision -> ours


def photos_needing_resize():
    """A photo shrunk (coffee, 400 x 600) and one enlarged (a 150 x 201 crop) at the test sizes
    (shorter side 256 or 192)."""
    return {"coffee": photos()["coffee"],
            "astronaut_crop": np.ascontiguousarray(photos()["astronaut_portrait"][40:190, 30:231])}


def d2_resize(image, size, max_size=MAX_SIZE):
    """detectron2's ResizeShortestEdge at test time: its size rule, PIL's bilinear resize."""
    from PIL import Image
    h, w = image.shape[:2]
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        cap = max_size / max(newh, neww)
        newh, neww = newh * cap, neww * cap
    new = (int(neww + 0.5), int(newh + 0.5))
    return np.asarray(Image.fromarray(image).resize(new, Image.BILINEAR))


def to_original(reference, original_size):
    """detectron2's ``detector_postprocess`` on the oracle's detections at the resized size:
    boxes scaled per axis and clipped, empty boxes dropped, masks pasted at the original size,
    keypoints scaled. Keeps ``boxes_resized`` and ``scale`` for the keypoint comparison."""
    from support.d2_masks import d2_paste_masks_in_image
    h, w = reference["image_size"]
    sx, sy = original_size[1] / w, original_size[0] / h
    out = dict(reference, original_size=tuple(original_size), scale=(sx, sy),
               boxes_resized=reference["boxes"])
    boxes = reference["boxes"] * np.array([sx, sy, sx, sy], np.float32)
    boxes = np.clip(boxes, 0, [original_size[1], original_size[0]] * 2).astype(np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out["boxes"] = boxes[keep]
    for key in ("scores", "labels", "boxes_resized", "mask_probs", "heatmaps",
                "keypoint_scores"):
        if key in out:
            out[key] = out[key][keep]
    if "mask_probs" in out:
        out["masks"] = d2_paste_masks_in_image(out["mask_probs"], out["boxes"], original_size)
    if "keypoints" in out:
        out["keypoints"] = out["keypoints"][keep] * np.array([sx, sy], np.float32)
    return out


def bgr_tensor(torch, image):
    """(H0, W0, 3) RGB uint8 -> (3, H0, W0) float BGR 0-255, detectron2's input."""
    return torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1).float()


def build_oracle(torch, case, images):
    from support import d2_oracle
    torch.manual_seed(0)
    size = min(min(im.shape[:2]) for im in images.values())
    args = dict(num_classes=case["num_classes"], min_size=size, max_size=MAX_SIZE,
                score_threshold=SCORE_THRESHOLD)
    if case["c4"]:
        model = d2_oracle.build_c4_oracle(**args)
    else:
        model = d2_oracle.build_fpn_oracle(case["kind"], backbone=case["backbone"], **args)
    hooks = d2_oracle.res5_bn_hooks(model, seed=1)
    randomise_(torch, model, [bgr_tensor(torch, im) for im in images.values()])
    for hook in hooks:
        hook.remove()
    return model


def run_oracle(torch, model, image):
    """One oracle forward: normalised input (RGB order), features, proposals, detections with
    masks pasted / keypoints decoded as detectron2."""
    from support.d2_keypoints import d2_keypoint_predictions
    from support.d2_masks import d2_paste_masks_in_image
    captured = {}
    hooks = [model.transform.register_forward_hook(
                 lambda m, i, o: captured.__setitem__("transform", o[0])),
             model.backbone.register_forward_hook(
                 lambda m, i, o: captured.__setitem__("features", o)),
             model.rpn.register_forward_hook(
                 lambda m, i, o: captured.__setitem__("proposals", o[0][0])),
             model.roi_heads.register_forward_hook(
                 lambda m, i, o: captured.__setitem__("result", o[0][0]))]
    if getattr(model.roi_heads, "keypoint_predictor", None) is not None:
        hooks.append(model.roi_heads.keypoint_predictor.register_forward_hook(
            lambda m, i, o: captured.__setitem__("heatmaps", o)))
    try:
        with torch.no_grad():
            model([bgr_tensor(torch, image)])
    finally:
        for h in hooks:
            h.remove()
    result = captured["result"]
    c4 = len(captured["features"]) == 1
    out = {"images": captured["transform"].tensors[0].permute(1, 2, 0).numpy()[..., ::-1],
           "image_size": tuple(captured["transform"].image_sizes[0]),
           "features": {("C4" if c4 else LEVELS[k]): v[0].permute(1, 2, 0).numpy()
                        for k, v in captured["features"].items()},
           "proposals": captured["proposals"].numpy(), "original_size": image.shape[:2],
           "boxes": result["boxes"].numpy(), "scores": result["scores"].numpy(),
           "labels": result["labels"].numpy()}
    if "masks" in result:
        out["mask_probs"] = result["masks"][:, 0].numpy()  # (n, S, S) of the detected class
        out["masks"] = d2_paste_masks_in_image(out["mask_probs"], out["boxes"], image.shape[:2])
    if "heatmaps" in captured:
        out["heatmaps"] = captured["heatmaps"].numpy()  # (n, Kp, 56, 56)
        decoded = d2_keypoint_predictions(out["heatmaps"], out["boxes"])  # (n, Kp, 3)
        out["keypoints"] = decoded[..., :2]  # the predictor's: no COCO offset
        out["keypoint_scores"] = decoded[..., 2]
    return out


def compare_masks(reference, ours, pairs):
    """Mask IoU of matched pairs (detectron2's paste has no integer box: one comparison)."""
    ious = [mask_iou(reference["masks"][i], ours["masks"][j]) for i, j, *_ in pairs]
    return {"worst_mask_iou": float(min(ious, default=1.0)),
            "mean_mask_iou": float(np.mean(ious)) if ious else 1.0, "paste_box_differs": 0}


def compare_keypoints(reference, ours, pairs):
    """Keypoint distances of matched pairs; where ceil(box side) at the resized size differs
    between the two boxes, against the oracle's decoding of its heatmaps at OUR box (mapped to
    the resized size, decoded, scaled back); argmax near-ties (one cell away, scores equal
    within 1e-4 relative) counted apart, as test_parity does."""
    from support.d2_keypoints import d2_keypoint_predictions
    i = [p[0] for p in pairs]
    j = [p[1] for p in pairs]
    scale = np.array(reference["scale"], np.float32)  # (sx, sy) resized -> original
    our_boxes = np.asarray(ours["boxes"][j], np.float32).reshape(-1, 4) / np.tile(scale, 2)
    at_ours = d2_keypoint_predictions(reference["heatmaps"][i], our_boxes)

    def ceil_sizes(boxes):
        return np.ceil(np.maximum(boxes[:, 2:] - boxes[:, :2], 1))

    same = (ceil_sizes(our_boxes) == ceil_sizes(reference["boxes_resized"][i])).all(1)[:, None]
    target = np.where(same[..., None], reference["keypoints"][i], at_ours[..., :2] * scale)
    target_scores = np.where(same, reference["keypoint_scores"][i], at_ours[..., 2])
    dist = np.linalg.norm(target - ours["keypoints"][j], axis=-1)  # (k, Kp)
    score_ours = ours["keypoint_scores"][j]
    tie = ((dist > 1.0) & (dist <= np.sqrt(2) + 1e-3)
           & (np.abs(target_scores - score_ours) <= 1e-4 * np.maximum(1, np.abs(score_ours))))
    return {"max_keypoint_dist": float(dist[~tie].max(initial=0.0)),
            "keypoints_within_1px": float(np.mean(dist <= 1.0)) if dist.size else 1.0,
            "argmax_near_ties": int(tie.sum()), "box_ceil_differs": int((~same).sum()),
            "keypoint_count": int(dist.size),
            "max_keypoint_score_diff": float(np.abs(target_scores - score_ours).max(initial=0))}


def compare_case(name, reference, ours):
    """test_parity's ``compare`` on boxes, proposals and features, plus the detectron2 mask /
    keypoint comparisons on the same matched pairs."""
    core = {k: v for k, v in reference.items() if k not in ("masks", "keypoints")}
    r = compare(name, core, ours)
    from support.detections import DETECTION_IOU, SCORE_TOL, match_detections
    pairs = [p for p in match_detections(reference, ours)
             if p[2] >= DETECTION_IOU and p[3] <= SCORE_TOL]
    if "masks" in reference:
        r.update(compare_masks(reference, ours, pairs))
    if "keypoints" in reference:
        r.update(compare_keypoints(reference, ours, pairs))
    print(f"[d2 parity] {name}: " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
        if k in ("worst_mask_iou", "mean_mask_iou", "max_keypoint_dist", "argmax_near_ties",
                 "max_keypoint_score_diff", "keypoints_within_1px")))
    return r


def convert_cli(checkpoint, output, config_name, overrides, no_torch=False):
    """``python -m keras_maskrcnn.convert detectron2 ...``, here or in a torch-less process."""
    argv = ["detectron2", "--checkpoint", str(checkpoint), "--config-name", config_name,
            "--output", str(output)]
    for item in overrides:
        argv += ["--set", item]
    if not no_torch:
        from keras_maskrcnn.convert.__main__ import main
        return main(argv)
    from integration.test_parity import _NO_TORCH_CLI
    run = subprocess.run([sys.executable, "-c", _NO_TORCH_CLI, *argv], capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def run_case(torch, tmp_path, case):
    """Oracle -> .pkl -> our CLI -> both models on the photos -> the compared figures."""
    from keras_maskrcnn import build_model, load_config
    from support.d2_layout import to_detectron2, write_pkl
    images = photos_needing_resize()
    resized = {name: d2_resize(image, case["size"]) for name, image in images.items()}
    oracle = build_oracle(torch, case, resized)
    state = to_detectron2(oracle.state_dict(), c4=case["c4"], num_sizes=5 if case["c4"] else 1)
    checkpoint = tmp_path / "model_final.pkl"
    write_pkl(checkpoint, state)
    overrides = (f"input.min_size_test={case['size']}", f"input.max_size={MAX_SIZE}",
                 f"input.min_size_train=[{case['size']}]",
                 f"model.roi_heads.score_threshold={SCORE_THRESHOLD}")
    convert_cli(checkpoint, tmp_path / "converted", case["config"], overrides,
                no_torch=case.get("no_torch", False))
    model = build_model(load_config(str(tmp_path / "converted" / "config.yaml")))
    model.load_weights(str(tmp_path / "converted" / "model.weights.h5"))
    results = []
    for index, (name, image) in enumerate(images.items()):
        reference = to_original(run_oracle(torch, oracle, resized[name]), image.shape[:2])
        first = index == 0 and not case["c4"]  # the backbone alone on the oracle's tensor
        ours = run_ours(model, image, reference["images"].copy() if first else None)
        results.append(compare_case(f"{case['config']}/{name}", reference, ours))
    return {"results": results, "model": model, "state": state, "checkpoint": checkpoint,
            "overrides": overrides}


CASES = {
    "r50_fpn": dict(config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x", kind="mask",
                    backbone="resnet50", c4=False, num_classes=21, size=256),
    "r50_c4": dict(config="mask_rcnn_R_50_C4_3x", kind="mask", backbone="resnet50", c4=True,
                   num_classes=21, size=256),
    "x101_fpn": dict(config="mask_rcnn_X_101_32x8d_FPN_3x", kind="mask",
                     backbone="resnext101_32x8d", c4=False, num_classes=21, size=192),
    "keypoint_r50_fpn": dict(config="keypoint_rcnn_R_50_FPN_3x", kind="keypoint",
                             backbone="resnet50", c4=False, num_classes=2, size=256,
                             no_torch=True),
}


@pytest.fixture(scope="module")
def r50_fpn(tmp_path_factory):
    torch = pytest.importorskip("torch")
    return run_case(torch, tmp_path_factory.mktemp("r50_fpn"), CASES["r50_fpn"])


def test_r50_fpn_mask_rcnn_parity(r50_fpn):
    check_bars(r50_fpn["results"], masks=True)
    assert all(r["distinct_labels"] >= 10 for r in r50_fpn["results"])


def test_conversion_errors_name_the_key(r50_fpn, tmp_path):
    """Missing, left-over and mis-shaped keys and a head the entry lacks are errors naming them,
    raised before any file is written."""
    from keras_maskrcnn.convert.detectron2 import from_detectron2
    state = r50_fpn["state"]
    name = "mask_rcnn_R_50_FPN_3x"
    key = "backbone.bottom_up.res3.0.conv2.norm.running_var"
    with pytest.raises(KeyError, match=re.escape(f"missing key in state_dict: '{key}'")):
        from_detectron2({k: v for k, v in state.items() if k != key}, name)
    with pytest.raises(ValueError, match=re.escape("not used by the model: ['roi_heads.extra']")):
        from_detectron2({**state, "roi_heads.extra": np.zeros(3, np.float32)}, name)
    key = "roi_heads.box_predictor.bbox_pred.weight"
    with pytest.raises(ValueError, match=re.escape(f"shape mismatch for '{key}'")):
        from_detectron2({**state, key: state[key][4:]}, name)
    with pytest.raises(ValueError, match="does not look like .*faster_rcnn_R_50_FPN_3x.*mask"):
        from_detectron2(state, "faster_rcnn_R_50_FPN_3x")
    with pytest.raises(ValueError, match="unsupported detectron2 config 'mask_rcnn_R_50_DC5_3x'"):
        convert_cli(r50_fpn["checkpoint"], tmp_path / "out", "mask_rcnn_R_50_DC5_3x", ())
    assert not (tmp_path / "out").exists()


def test_converted_config_is_the_zoo_config(r50_fpn):
    """The written config.yaml (the converted model's recipe) is the zoo entry's config for the
    checkpoint's 20 classes with the CLI's overrides: contiguous ids, not COCO's."""
    from keras_maskrcnn.builders import model_config_dict
    from keras_maskrcnn.convert import detectron2_zoo as zoo
    expected = zoo.zoo_config(CASES["r50_fpn"]["config"], 21, r50_fpn["overrides"])
    assert r50_fpn["model"].config_dict == model_config_dict(expected)
    assert r50_fpn["model"].category_ids is None


@pytest.mark.parametrize("name", [
    pytest.param("r50_c4", marks=pytest.mark.slow),
    pytest.param("x101_fpn", marks=pytest.mark.slow), "keypoint_r50_fpn"])
def test_parity(name, torch, tmp_path):
    case = CASES[name]
    results = run_case(torch, tmp_path, case)["results"]
    check_bars(results, masks=case["kind"] == "mask", keypoints=case["kind"] == "keypoint")
    if case["num_classes"] > 2:
        assert all(r["distinct_labels"] >= 10 for r in results)
