"""keras_maskrcnn.visualize (drawing) and keras_maskrcnn.predict (the CLI).

Drawing is checked pixel by pixel against a numpy oracle of the mask blend on a synthetic
gradient image with hand-made instances: blended interiors, contours, box outlines, labels,
keypoints and skeleton lines, untouched pixels far from everything, the score threshold and
colour order. The CLI runs end to end on the tiny config with saved random weights.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_maskrcnn import predict, visualize
from keras_maskrcnn.visualize import PALETTE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
ASTRONAUT = os.path.join(ROOT, "keras_maskrcnn", "assets", "astronaut.jpg")
H, W = 96, 128
SKELETON = [(0, 1), (1, 2), (2, 3), (3, 0)]


def _image():
    """(H, W, 3) uint8 gradient, so a blend with the wrong pixel would show."""
    yy, xx = np.mgrid[:H, :W]
    return np.stack([xx * 2, yy * 2, 255 - xx - yy], -1).clip(0, 255).astype(np.uint8)


def _result(order=(0, 1, 2)):
    """Three instances: A (0.9) rectangle mask, B (0.8) disk, C (0.3, below 0.5)."""
    yy, xx = np.mgrid[:H, :W]
    mask_a = (yy >= 35) & (yy <= 75) & (xx >= 15) & (xx <= 45)
    mask_b = (xx - 95) ** 2 + (yy - 65) ** 2 <= 18 ** 2
    mask_c = (yy >= 16) & (yy <= 23) & (xx >= 104) & (xx <= 120)  # below its label
    kp_a = [[30, 40, 1.0], [45, 55, 1.0], [30, 70, 1.0], [15, 55, -1.0]]  # left hidden
    kp_b = [[95, 47, 2.0], [113, 65, 2.0], [95, 83, 2.0], [77, 65, 2.0]]
    kp_c = [[110, 8, 5.0]] * 4
    rows = {
        "boxes": np.array([[10, 30, 50, 80], [70, 40, 120, 90], [100, 2, 124, 25]], np.float32),
        "scores": np.array([0.9, 0.8, 0.3], np.float32),
        "labels": np.array([1, 3, 2], np.int64),
        "masks": np.stack([mask_a, mask_b, mask_c]),
        "keypoints": np.array([kp_a, kp_b, kp_c], np.float32)}
    return {k: v[list(order)] for k, v in rows.items()}


def _no_keypoints(result):
    return {k: v for k, v in result.items() if k != "keypoints"}


def _erode(mask):
    p = np.pad(mask, 1)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _blend_errors(out, image, masks, colors, alpha=0.5):
    """Oracle: each mask's interior is round((1 - a) * image + a * colour), its 1-pixel
    boundary is the colour. Returns the number of wrong pixels (0 = all right)."""
    wrong = 0
    for mask, color in zip(masks, colors):
        interior = _erode(mask)
        expected = np.round((1 - alpha) * image[interior] + alpha * np.array(color))
        wrong += np.sum(np.any(np.abs(out[interior].astype(int) - expected) > 1, -1))
        wrong += np.sum(np.any(out[mask & ~interior] != np.array(color), -1))
    return int(wrong)


# ----------------------------------------------------------------------------- drawing
def test_masks_boxes_and_untouched_pixels():
    image, result = _image(), _result()
    before = image.copy()
    out = visualize.draw_detections(image, _no_keypoints(result), {1: "cat", 3: "dog"})
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)  # input untouched
    # Masks: blended interiors and full-colour contours, best score = PALETTE[0].
    assert _blend_errors(out, image, result["masks"][:2], PALETTE[:2]) == 0
    # Box outlines (1 pixel at this size) are exactly the colour on all four sides.
    for (x1, y1, x2, y2), color in zip(result["boxes"][:2].astype(int), PALETTE[:2]):
        edges = np.concatenate([out[y1, x1:x2 + 1], out[y2, x1:x2 + 1],
                                out[y1:y2 + 1, x1], out[y1:y2 + 1, x2]])
        assert np.all(edges == np.array(color))
        assert np.any(out[y1 + 2, x1 + 2] != np.array(color))  # the outline is 1 pixel
    # Changed pixels lie only in the boxes and the label strips above them.
    allowed = np.zeros((H, W), bool)
    for x1, y1, x2, y2 in result["boxes"][:2].astype(int):
        allowed[max(y1 - 20, 0):y2 + 1, x1:x2 + 1 + 60] = True
    changed = np.any(out != image, -1)
    assert changed.sum() > 1000 and not np.any(changed & ~allowed)
    np.testing.assert_array_equal(out[84:, :60], image[84:, :60])  # far from everything
    np.testing.assert_array_equal(out[:26, 100:], image[:26, 100:])  # C: score 0.3 < 0.5


def test_mutations_fail_the_oracle():
    """The blend oracle would catch a wrong alpha, colour order, transposed or shifted masks."""
    image, result = _image(), _no_keypoints(_result())
    masks = result["masks"][:2]
    out = visualize.draw_detections(image, result)
    assert _blend_errors(out, image, masks, PALETTE[:2]) == 0
    assert _blend_errors(visualize.draw_detections(image, result, alpha=0.3), image, masks,
                         PALETTE[:2]) > 100
    assert _blend_errors(out, image, masks, PALETTE[1::-1]) > 100  # swapped colours
    assert _blend_errors(out, image, np.roll(masks, 3, axis=2), PALETTE[:2]) > 100
    flipped = dict(result, masks=result["masks"][:, ::-1])  # upside-down masks
    assert _blend_errors(visualize.draw_detections(image, flipped), image, masks,
                         PALETTE[:2]) > 100


def test_colours_follow_score_order_not_input_order():
    image = _image()
    a = visualize.draw_detections(image, _result((0, 1, 2)))
    b = visualize.draw_detections(image, _result((2, 1, 0)))
    np.testing.assert_array_equal(a, b)
    out = visualize.draw_detections(image, _no_keypoints(_result((1, 0, 2))))
    assert _blend_errors(out, image, _result()["masks"][:2], PALETTE[:2]) == 0


def test_score_threshold():
    image, result = _image(), _no_keypoints(_result())
    low = visualize.draw_detections(image, result, score_threshold=0.1)
    assert _blend_errors(low, image, result["masks"], PALETTE[:3]) == 0
    assert np.any(low[:22, 100:] != image[:22, 100:])
    at = visualize.draw_detections(image, result, score_threshold=0.3)  # >= is kept
    np.testing.assert_array_equal(at, low)
    none = visualize.draw_detections(image, result, score_threshold=0.95)
    np.testing.assert_array_equal(none, image)


def test_keypoints_and_skeleton():
    image, result = _image(), _result()
    plain = visualize.draw_detections(image, _no_keypoints(result), keypoint_skeleton=SKELETON)
    out = visualize.draw_detections(image, result, keypoint_skeleton=SKELETON)
    for points, color in zip(result["keypoints"][:2], PALETTE[:2]):
        for x, y, score in points:
            if score > 0.05:  # visible: the dot's centre is the instance colour
                assert np.all(out[int(y), int(x)] == np.array(color))
            else:  # hidden: nothing drawn there
                np.testing.assert_array_equal(out[int(y), int(x)], plain[int(y), int(x)])
    # A visible edge (top -> right of A) is drawn; edges to the hidden keypoint are not.
    mid = out[46:50, 36:40]  # around (37.5, 47.5)
    assert np.any(np.all(mid == np.array(PALETTE[0]), -1))
    np.testing.assert_array_equal(out[60:65, 20:25], plain[60:65, 20:25])  # left-bottom edge
    named = visualize.draw_detections(image, result, keypoint_skeleton=SKELETON,
                                      keypoint_names=["t", "r", "b", "l"])
    assert np.sum(np.any(named != out, -1)) > 20  # names are written next to the dots


def test_label_text_and_names():
    assert visualize.format_label(3, 0.876, {3: "dog"}) == "dog 0.88"
    assert visualize.format_label(3, None, {3: "dog"}) == "dog"
    assert visualize.format_label(7, 0.5, {3: "dog"}) == "class 7 0.50"
    assert visualize.class_name(2, ["__background__", "cat", "dog"]) == "dog"  # label-indexed
    assert visualize.class_name(5, ["__background__", "cat"]) == "class 5"
    assert visualize.class_name(np.int64(1), None) == "class 1"
    image, result = _image(), _no_keypoints(_result())
    out = visualize.draw_detections(image, result, {1: "cat"})
    strip = out[16:30, 10:60]  # A's label above its box (y1 = 30)
    is_bg = np.all(strip == np.array(PALETTE[0]), -1)
    assert is_bg.mean() > 0.4 and (~is_bg).sum() > 20  # a filled box with text on it
    longer = visualize.draw_detections(image, result, {1: "a much longer name"})
    assert np.sum(np.any(longer != out, -1)) > 50


def test_label_inside_box_at_image_top_and_degenerate_inputs():
    image = _image()
    result = {"boxes": np.array([[5, 0, 60, 40], [-30, -20, 500, 400], [50, 50, 40, 45],
                                 [200, 200, 300, 300]], np.float32),
              "scores": np.array([0.9, 0.8, 0.7, 0.6]), "labels": np.array([1, 2, 3, 4]),
              "keypoints": np.array([[[-10, -10, 1], [1e4, 5, 1]]] * 4, np.float32)}
    out = visualize.draw_detections(image, result, keypoint_skeleton=[(0, 1)])
    assert out.shape == (H, W, 3)
    assert np.mean(np.all(out[1:12, 6:40] == np.array(PALETTE[0]), -1)) > 0.4  # label inside


def test_empty_and_input_forms():
    image = _image()
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros((0,), np.float32),
             "labels": np.zeros((0,), np.int64), "masks": np.zeros((0, H, W), bool),
             "keypoints": np.zeros((0, 4, 3), np.float32)}
    out = visualize.draw_detections(image, empty)
    np.testing.assert_array_equal(out, image)
    assert out is not image
    result = _result()
    ref = visualize.draw_detections(image, result)
    probs = dict(result, masks=np.where(result["masks"], 0.9, 0.2).astype(np.float32))
    np.testing.assert_array_equal(visualize.draw_detections(image, probs), ref)
    tensors = {k: tf.constant(v) for k, v in result.items()}
    tensors["classes"] = tensors.pop("labels")
    np.testing.assert_array_equal(visualize.draw_detections(image.astype(np.float32),
                                                            tensors), ref)
    with pytest.raises(ValueError, match="masks"):
        visualize.draw_detections(image, dict(result, masks=result["masks"][:, :10]))
    with pytest.raises(ValueError, match="image"):
        visualize.draw_detections(image[..., 0], result)


def test_draw_ground_truth_skips_padding():
    image, result = _image(), _result()
    pad = lambda a, v: np.concatenate([a, np.full((2,) + a.shape[1:], v, a.dtype)])  # noqa
    boxes, labels = pad(result["boxes"], -1), pad(result["labels"], -1)
    masks = pad(result["masks"].astype(np.uint8), 0)
    kps = pad(result["keypoints"], -1)
    kps[0, 3, 2] = 0  # v = 0: not labelled, not drawn
    out = visualize.draw_ground_truth(image.astype(np.float32), boxes, labels, masks, kps,
                                      {1: "cat"}, SKELETON)
    ref = visualize.draw_instances(image, result["boxes"], result["labels"], None,
                                   result["masks"], kps[:3], {1: "cat"}, SKELETON,
                                   keypoint_threshold=0.0)
    np.testing.assert_array_equal(out, ref)
    assert _blend_errors(visualize.draw_ground_truth(image, boxes, labels, masks), image,
                         result["masks"], PALETTE[:3]) == 0  # GT colours in row order


def test_save_png_round_trip(tmp_path):
    image = visualize.draw_detections(_image(), _result())
    path = visualize.save_png(image, str(tmp_path / "sub" / "out.png"))
    with Image.open(path) as f:
        assert f.format == "PNG"
        np.testing.assert_array_equal(np.asarray(f.convert("RGB")), image)
    with pytest.raises(ValueError):
        visualize.save_png(image.astype(np.float32), str(tmp_path / "x.png"))


# ----------------------------------------------------------------------------- predict CLI
def _write_annotations(directory, categories):
    os.makedirs(os.path.join(directory, "annotations"), exist_ok=True)
    path = os.path.join(directory, "annotations", "instances_val.json")
    with open(path, "w") as f:
        json.dump({"images": [], "annotations": [], "categories": [
            {"id": i, "name": n} for i, n in categories]}, f)
    return path


def test_predict_end_to_end(tmp_path, capsys, monkeypatch):
    from keras_maskrcnn import builders, config

    overrides = ["model.roi_heads.score_threshold=0.0",
                 f"data.synthetic.output_dir={tmp_path}"]
    _write_annotations(str(tmp_path), [(7, "rectangle"), (1, "circle"), (3, "triangle")])
    model = builders.build_model(config.load_config(TINY, overrides), category_ids=[1, 3, 7])
    weights = str(tmp_path / "tiny.weights.h5")
    model.save_weights(weights)
    output = str(tmp_path / "out" / "astronaut.png")
    argv = ["--config", TINY, "--weights", weights, "--image", ASTRONAUT, "--output", output,
            "--score-threshold", "0"] + [a for o in overrides for a in ("--set", o)]
    built, build = [], builders.build_model

    def build_and_keep(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(builders, "build_model", build_and_keep)
    result = predict.main(argv)
    printed = capsys.readouterr().out
    image = predict.read_image(ASTRONAUT)
    with Image.open(output) as f:
        drawn = np.asarray(f.convert("RGB"))
    assert drawn.shape == image.shape and np.any(drawn != image)
    n = len(result["scores"])
    assert n == 10 and set(result["labels"]) <= {1, 3, 7}
    assert printed.count("\n  ") == n + 1 and f"wrote {output}" in printed
    assert any(name in printed for name in ("circle", "triangle", "rectangle"))
    # The CLI's model has the saved weights and the categories of the json.
    assert built[0].category_ids == [1, 3, 7]
    for saved, loaded in zip(model.weights, built[0].weights):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    assert len(model.weights) == len(built[0].weights) > 50


def test_categories(tmp_path):
    from keras_maskrcnn import config

    cfg = config.load_config(TINY, [f"data.synthetic.output_dir={tmp_path}"])
    notes = []
    assert predict.resolve_categories(cfg, log=notes.append) == (None, None)
    assert "no annotations json" in notes[-1]
    _write_annotations(str(tmp_path), [(5, "a"), (2, "b")])  # 2 names, model has 3 classes
    assert predict.resolve_categories(cfg, log=notes.append) == (None, None)
    assert "2 categories" in notes[-1]
    _write_annotations(str(tmp_path), [(5, "a"), (2, "b"), (9, "c")])
    assert predict.resolve_categories(cfg) == ((2, 5, 9), {2: "b", 5: "a", 9: "c"})
    coco = config.load_config(TINY, ["data.val.format=coco", "data.val.images=x",
                                     "data.val.annotations=/nonexistent.json"])
    assert predict.annotations_path(coco) == "/nonexistent.json"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        predict.read_categories(str(bad))


@pytest.mark.parametrize("flag", ["--input", "--weights", "--config", "--annotations"])
def test_predict_missing_files(tmp_path, capsys, flag):
    args = {"--config": TINY, "--input": ASTRONAUT, "--output": str(tmp_path / "o.png")}
    args[flag] = str(tmp_path / "missing.file")
    with pytest.raises(SystemExit) as err:
        predict.main([a for kv in args.items() for a in kv])
    assert err.value.code == 2
    err_text = capsys.readouterr().err  # --config also says no packaged config has the name
    assert f"{flag} {tmp_path / 'missing.file'}: " in err_text and "no such file" in err_text
    assert not os.path.exists(tmp_path / "o.png")


def test_predict_bad_image_and_module_entry(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "keras_maskrcnn.predict", "--config", TINY, "--image",
           str(bad), "--output", str(tmp_path / "o.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "cannot decode the image" in proc.stderr
