"""COCO results conversion, COCOeval wrapper, evaluate_model and the evaluate.py CLI."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf  # noqa: F401  (conftest imported torch first)
from PIL import Image
from pycocotools import mask as mask_utils

from keras_maskrcnn import build_model, config, evaluation
import support

ROOT = support.ROOT
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
KP_NAMES = ["top", "right", "bottom", "left"]
SIZES = {1: (48, 64), 2: (40, 56), 3: (64, 48)}  # image id -> (height, width)


# ----------------------------------------------------------------------------- tiny GT
def _rect_ann(ann_id, image_id, cat, x, y, w, h, keypoints=True):
    ann = {"id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": 0,
           "bbox": [x, y, w, h], "area": float(w * h),
           "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    if keypoints:  # the rectangle's edge midpoints, all visible
        ann["keypoints"] = [x + w / 2, y, 2, x + w, y + h / 2, 2, x + w / 2, y + h, 2,
                            x, y + h / 2, 2]
        ann["num_keypoints"] = 4
    return ann


def make_gt():
    """3 images, categories 1 and 7 with 4 keypoints, 3 without (non-contiguous ids)."""
    images = [{"id": i, "file_name": f"{i:03d}.png", "height": h, "width": w}
              for i, (h, w) in SIZES.items()]
    anns = [_rect_ann(1, 1, 1, 4, 6, 20, 16), _rect_ann(2, 1, 3, 30, 10, 24, 30, False),
            _rect_ann(3, 2, 7, 10, 8, 30, 20), _rect_ann(4, 3, 1, 5, 5, 36, 40),
            _rect_ann(5, 3, 3, 2, 50, 12, 10, False)]
    kp_cat = {"keypoints": KP_NAMES, "skeleton": [[1, 2], [2, 3], [3, 4], [4, 1]]}
    cats = [{"id": 1, "name": "square", **kp_cat}, {"id": 3, "name": "blob"},
            {"id": 7, "name": "bar", **kp_cat}]
    return {"images": images, "annotations": anns, "categories": cats}


def gt_as_detections(gt):
    """Per image id, a ``model.detect``-style dict that reproduces the GT exactly."""
    coco = evaluation.load_coco_gt(copy.deepcopy(gt))
    out = {}
    for image_id, (h, w) in SIZES.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns], np.float32)
        kps = np.array([a.get("keypoints", [0.0] * 12) for a in anns], np.float32)
        out[image_id] = {"boxes": boxes, "scores": np.ones(len(anns), np.float32),
                         "labels": np.array([a["category_id"] for a in anns]),
                         "masks": np.stack([coco.annToMask(a) > 0 for a in anns]),
                         "keypoints": kps.reshape(len(anns), 4, 3)}
    return out


def perfect_results(gt):
    dets = gt_as_detections(gt)
    return [r for i in SIZES for r in evaluation.detections_to_coco_results(i, dets[i])]


def run(gt, results, **kwargs):
    return evaluation.run_coco_eval(evaluation.load_coco_gt(copy.deepcopy(gt)), results,
                                    verbose=False, **kwargs)


# ----------------------------------------------------------------------------- conversion
def test_results_round_trip(rng):
    h, w = 30, 45
    masks = rng.uniform(size=(3, h, w)) > 0.6
    boxes = np.array([[1.5, 2.0, 11.5, 22.0], [0, 0, 45, 30], [40, 5, 40, 5]], np.float32)
    kps = rng.uniform(0, 30, (3, 4, 3)).astype(np.float32)
    result = {"boxes": boxes, "scores": np.array([0.9, 0.5, 0.25], np.float32),
              "labels": np.array([2, 1, 3]), "masks": masks, "keypoints": kps}
    out = evaluation.detections_to_coco_results(17, result, label_map=[5, 9, 11])
    json.loads(json.dumps(out))  # plain JSON types only
    assert [r["category_id"] for r in out] == [9, 5, 11]  # contiguous label i -> map[i - 1]
    assert [r["image_id"] for r in out] == [17] * 3
    np.testing.assert_allclose([r["score"] for r in out], [0.9, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(out[0]["bbox"], [1.5, 2.0, 10.0, 20.0])  # xywh, w = x2 - x1
    np.testing.assert_allclose(out[2]["bbox"], [40, 5, 0, 0])  # degenerate box kept
    for r, mask, kp in zip(out, masks, kps):
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [h, w]
        rle = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle), mask)
        np.testing.assert_allclose(r["keypoints"], kp.reshape(-1), rtol=1e-6)  # [x, y, v] * Kp
    # no mapping: labels are dataset ids; "classes" accepted as the label key
    plain = evaluation.detections_to_coco_results(1, {"boxes": boxes, "scores": [1, 1, 1],
                                                      "classes": np.array([2, 1, 3])})
    assert [r["category_id"] for r in plain] == [2, 1, 3]
    assert all("segmentation" not in r and "keypoints" not in r for r in plain)


def test_results_empty():
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int),
             "masks": np.zeros((0, 10, 12), bool), "keypoints": np.zeros((0, 4, 3))}
    assert evaluation.detections_to_coco_results(1, empty, label_map=[4, 5]) == []
    assert evaluation.encode_masks(np.zeros((0, 5, 5), bool)) == []


# ----------------------------------------------------------------------------- COCOeval
def test_perfect_predictions_give_ap_one():
    gt = make_gt()
    results = perfect_results(gt)
    before = copy.deepcopy(results)
    metrics = run(gt, results)
    assert results == before  # loadRes mutates its input: we pass copies
    assert set(metrics) == {"bbox", "segm", "keypoints", "per_category"}
    assert list(metrics["bbox"]) == list(evaluation.DETECTION_STATS)
    assert list(metrics["keypoints"]) == list(evaluation.KEYPOINT_STATS)
    for iou_type in ("bbox", "segm", "keypoints"):
        for name in ("AP", "AP50", "AP75"):
            assert metrics[iou_type][name] == pytest.approx(1.0), (iou_type, name)
    assert metrics["bbox"]["AR100"] == pytest.approx(1.0)


def test_mutations_lower_ap():
    """The perfect case is sensitive to each convention: xyxy instead of xywh, keypoints with
    x and y swapped, masks of the wrong object."""
    gt = make_gt()
    results = perfect_results(gt)
    xyxy = copy.deepcopy(results)
    for r in xyxy:
        x, y, w, h = r["bbox"]
        r["bbox"] = [x, y, x + w, y + h]
    assert run(gt, xyxy, iou_types=("bbox",))["bbox"]["AP"] < 0.9
    swapped = copy.deepcopy(results)
    for r in swapped:
        kp = np.reshape(r["keypoints"], (-1, 3))
        r["keypoints"] = kp[:, [1, 0, 2]].reshape(-1).tolist()
    assert run(gt, swapped, iou_types=("keypoints",))["keypoints"]["AP"] < 0.5
    rolled = copy.deepcopy(results)
    for a, b in zip(rolled[:2], results[1::-1]):  # swap the two masks of image 1
        a["segmentation"] = b["segmentation"]
    assert run(gt, rolled, iou_types=("segm",))["segm"]["AP"] < 0.9


def test_shifted_box_hand_computed():
    """One 20x20 GT, a detection shifted 4 px: IoU 16*20/(24*20) = 2/3, matched at the
    thresholds 0.5..0.65 (4 of 10) -> AP 0.4, AP50 1, AP75 0."""
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 50, "width": 50}],
          "annotations": [_rect_ann(1, 1, 1, 10, 10, 20, 20, False)],
          "categories": [{"id": 1, "name": "a"}]}
    det = {"boxes": np.array([[14.0, 10.0, 34.0, 30.0]]), "scores": np.array([0.8]),
           "labels": np.array([1])}
    metrics = run(gt, evaluation.detections_to_coco_results(1, det), iou_types=("bbox",))
    assert metrics["bbox"]["AP"] == pytest.approx(0.4)
    assert metrics["bbox"]["AP50"] == pytest.approx(1.0)
    assert metrics["bbox"]["AP75"] == pytest.approx(0.0)


def test_shifted_keypoints_and_sigmas():
    gt = make_gt()
    results = perfect_results(gt)
    for r in results:
        r["keypoints"] = (np.reshape(r["keypoints"], (-1, 3)) + [2.0, 1.0, 0.0]).ravel().tolist()
    default = run(gt, results, iou_types=("keypoints",))["keypoints"]["AP"]
    tight = run(gt, results, iou_types=("keypoints",), kpt_oks_sigmas=0.02)["keypoints"]["AP"]
    loose = run(gt, results, iou_types=("keypoints",),
                kpt_oks_sigmas=[0.2] * 4)["keypoints"]["AP"]
    assert tight < default < 1.0 and loose == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 values for 4 keypoints"):
        run(gt, results, iou_types=("keypoints",), kpt_oks_sigmas=[0.1] * 3)


def test_keypoints_only_on_keypoint_categories():
    gt = make_gt()
    results = perfect_results(gt)
    junk = {"image_id": 1, "category_id": 3, "score": 1.0, "bbox": [0, 0, 5, 5],
            "keypoints": [0.0, 0.0, 1.0] * 4}  # keypoints on a category without keypoints
    metrics = run(gt, results + [junk], iou_types=("keypoints",))
    assert metrics["keypoints"]["AP"] == pytest.approx(1.0)
    no_kp = make_gt()
    for cat in no_kp["categories"]:
        cat.pop("keypoints", None)
    metrics = run(no_kp, results)
    assert "keypoints" not in metrics and "keypoints" in metrics["info"]["notes"]
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)


def test_num_keypoints_filled_in_when_missing():
    gt = make_gt()
    for ann in gt["annotations"]:
        ann.pop("num_keypoints", None)
    metrics = run(gt, perfect_results(make_gt()), iou_types=("keypoints",))
    assert metrics["keypoints"]["AP"] == pytest.approx(1.0)


def test_keypoint_category_gt_without_keypoints_does_not_crash():
    """A keypoint detection paired with a GT that has no ``keypoints`` field (pycocotools
    raised KeyError in computeOks): that GT counts as unlabelled (num_keypoints 0, ignored)."""
    gt = make_gt()
    gt["categories"][1]["keypoints"] = KP_NAMES  # category 3 now has keypoints, its GT none
    results = perfect_results(make_gt())
    for r in results:
        if r["category_id"] == 3:
            r["keypoints"] = [5.0, 5.0, 1.0] * 4
    metrics = run(gt, results, iou_types=("keypoints",))
    assert -1.0 <= metrics["keypoints"]["AP"] <= 1.0


def test_empty_results():
    with pytest.warns(UserWarning, match="no detections"):
        metrics = run(make_gt(), [])
    for iou_type in ("bbox", "segm", "keypoints"):
        assert set(metrics[iou_type].values()) == {0.0}
        assert "loadRes" in metrics["info"]["notes"][iou_type]
    with pytest.warns(UserWarning, match="no detections"):  # boxes only: segm is empty
        boxes_only = [{k: v for k, v in r.items() if k != "segmentation"}
                      for r in perfect_results(make_gt())]
        metrics = run(make_gt(), boxes_only, iou_types=("bbox", "segm"))
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == 0.0


def test_image_ids_restrict_evaluation():
    gt = make_gt()
    only_1 = [r for r in perfect_results(gt) if r["image_id"] == 1]
    assert run(gt, only_1, iou_types=("bbox",))["bbox"]["AR100"] < 0.5  # images 2, 3 missed
    restricted = run(gt, only_1, iou_types=("bbox",), image_ids=[1])
    assert restricted["bbox"]["AR100"] == pytest.approx(1.0)


def test_unknown_iou_type():
    with pytest.raises(ValueError, match="unknown iou type"):
        run(make_gt(), perfect_results(make_gt()), iou_types=("box",))


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """make_gt() written as JSON + PNG/JPEG images, plus one corrupt image (id 4); category 3
    gets keypoint names too (its GT has none: COCOeval ignores it for keypoints)."""
    root = tmp_path_factory.mktemp("coco")
    gt = make_gt()
    gt["categories"][1]["keypoints"] = KP_NAMES  # every detection gets keypoint-evaluated
    rng = np.random.default_rng(0)
    for info in gt["images"]:
        pixels = rng.integers(0, 255, (info["height"], info["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / info["file_name"])
    gt["images"][1]["file_name"] = "002.jpg"  # a JPEG too
    Image.open(root / "002.png").convert("RGB").save(root / "002.jpg", quality=95)
    gt["images"].append({"id": 4, "file_name": "broken.png", "height": 10, "width": 10})
    (root / "broken.png").write_bytes(b"not an image")
    (root / "annotations.json").write_text(json.dumps(gt))
    return root


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(config.load_config(TINY))


@pytest.fixture(scope="module")
def reference(dataset, tiny_model, tmp_path_factory):
    """evaluate_model on every image of ``dataset``: (metrics, output directory)."""
    out = tmp_path_factory.mktemp("eval")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\).*broken.png"):
        metrics = evaluation.evaluate_model(tiny_model, str(dataset / "annotations.json"),
                                            str(dataset), output_dir=str(out), progress=False)
    return metrics, out


def test_evaluate_model_end_to_end(dataset, tiny_model, reference):
    metrics, out = reference
    assert set(evaluation.IOU_TYPES) <= set(metrics)  # tiny has masks and keypoints
    for iou_type in evaluation.IOU_TYPES:
        assert list(metrics[iou_type]) == list(evaluation.stat_names(iou_type))
        assert all(-1.0 <= v <= 1.0 for v in metrics[iou_type].values())
    info = metrics["info"]
    assert "notes" not in info  # every iou type had results and was evaluated
    assert info["num_images"] == 3 and info["skipped"] == ["broken.png"]
    results = json.loads((out / "results.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert info["num_results"] == len(results) > 0  # random weights still detect something
    # num_classes - 1 == 3 categories: contiguous labels mapped to the JSON's sorted ids
    assert {r["category_id"] for r in results} <= {1, 3, 7}
    assert {r["image_id"] for r in results} <= {1, 2, 3}
    for r in results:
        h, w = SIZES[r["image_id"]]
        assert r["segmentation"]["size"] == [h, w] and len(r["keypoints"]) == 12
    # max_images and iou_types
    first = evaluation.evaluate_model(tiny_model, str(dataset / "annotations.json"),
                                      str(dataset), max_images=1, iou_types=("bbox",),
                                      progress=False, verbose=False)
    assert set(first) == {"bbox", "per_category", "info"} and first["info"]["num_images"] == 1


def test_evaluate_model_uses_model_mapping(tiny_model):
    assert evaluation.label_map_for(tiny_model, evaluation.load_coco_gt(make_gt())) == [1, 3, 7]
    tiny_model.category_ids = [7, 3, 1]  # detect() applies the model's own mapping
    try:
        assert evaluation.label_map_for(tiny_model, evaluation.load_coco_gt(make_gt())) is None
    finally:
        tiny_model.category_ids = None
    two_cats = make_gt()
    two_cats["categories"] = two_cats["categories"][:2]
    with pytest.warns(UserWarning, match="no category mapping"):
        assert evaluation.label_map_for(tiny_model, evaluation.load_coco_gt(two_cats)) is None


# ----------------------------------------------------------------------------- CLI
def _cli_args(dataset, *extra):
    return ["--config", TINY, "--set", "data.val.format=coco",
            "--set", f"data.val.annotations={dataset / 'annotations.json'}",
            "--set", f"data.val.images={dataset}", *extra]


def test_cli_matches_evaluate_model(dataset, tiny_model, reference, tmp_path, capsys):
    sys.path.insert(0, ROOT)
    try:
        import evaluate as cli
    finally:
        sys.path.remove(ROOT)
    weights = str(tmp_path / "tiny.weights.h5")
    tiny_model.save_weights(weights)
    reference, ref_dir = reference
    out = tmp_path / "cli"
    with pytest.warns(UserWarning, match="broken.png"):
        assert cli.main(_cli_args(dataset, "--weights", weights, "--output", str(out))) == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in printed  # COCOeval's table
    assert "bbox AP" in printed and "metrics.json" in printed.splitlines()[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    for iou_type in evaluation.IOU_TYPES:  # same weights, same mapping -> same numbers
        assert metrics[iou_type] == pytest.approx(reference[iou_type])
    cli_results = json.loads((out / "results.json").read_text())
    ref_results = json.loads((ref_dir / "results.json").read_text())
    assert [r["category_id"] for r in cli_results] == [r["category_id"] for r in ref_results]
    np.testing.assert_allclose([r["bbox"] for r in cli_results],
                               [r["bbox"] for r in ref_results], atol=1e-3)


def test_cli_errors_name_the_path(dataset, tmp_path):
    """Subprocess: errors come before TensorFlow is imported (fast) with exit status 2."""
    def cli(*args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)

    missing = str(tmp_path / "missing.weights.h5")
    proc = cli(*_cli_args(dataset, "--weights", missing))
    assert proc.returncode == 2 and f"weights file not found: {missing}" in proc.stderr
    proc = cli("--config", TINY, "--weights", missing, "--set",
               f"data.synthetic.output_dir={tmp_path / 'nowhere'}")
    assert proc.returncode == 2 and "instances_val.json" in proc.stderr
    assert str(tmp_path / "nowhere") in proc.stderr
    proc = cli(*_cli_args(dataset, "--weights", missing, "--set", "eval.max_imagez=3"))
    assert proc.returncode == 2 and "eval.max_imagez" in proc.stderr
    (tmp_path / "w.bin").write_bytes(b"")
    proc = cli(*_cli_args(dataset, "--weights", str(tmp_path / "w.bin")))
    assert proc.returncode == 2 and ".weights.h5 or .keras" in proc.stderr


def test_label_map_rejects_out_of_range_labels():
    det = {"boxes": np.zeros((1, 4)), "scores": [1.0], "labels": np.array([0])}
    with pytest.raises(ValueError, match="1..2"):
        evaluation.detections_to_coco_results(1, det, label_map=[4, 5])


def test_read_image(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(gray).save(tmp_path / "g.png")
    image, reason = evaluation.read_image(str(tmp_path / "g.png"), {"height": 12, "width": 10})
    assert reason is None and image.shape == (12, 10, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 1], gray)  # grayscale -> RGB
    image, reason = evaluation.read_image(str(tmp_path / "g.png"), {"height": 10, "width": 12})
    assert image is None and "differs" in reason
    image, reason = evaluation.read_image(str(tmp_path / "none.png"), {})
    assert image is None and "no such file" in reason


def test_cli_loads_a_keras_file(tiny_model, tmp_path):
    sys.path.insert(0, ROOT)
    try:
        import evaluate as cli
    finally:
        sys.path.remove(ROOT)
    path = str(tmp_path / "tiny.keras")
    tiny_model.save(path)
    loaded = cli.load_model(config.load_config(TINY), path, [1, 3, 7])
    assert list(loaded.category_ids) == [1, 3, 7]  # mapping given when the file has none
    for a, b in zip(tiny_model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
