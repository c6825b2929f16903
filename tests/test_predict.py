"""Predict at scale: folder / glob / video inputs, batching, results.json (pycocotools reads it)
and the same detections as ``model.detect`` image by image."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import support
from keras_maskrcnn import media, predict, prediction

TINY = os.path.join(support.ROOT, "configs", "tiny.yaml")
IDS, NAMES = [1, 3, 7], ["circle", "square", "triangle"]
SIZES = {"a.jpg": (100, 150), "b.png": (120, 180), "c.png": (90, 200), "d.jpg": (100, 150)}
BATCH = 3


@pytest.fixture(scope="module")
def model():
    from keras_maskrcnn import builders, config

    cfg = config.load_config(TINY, ["model.roi_heads.score_threshold=0.0",
                                    f"model.category_ids={IDS}",
                                    f"model.category_names={json.dumps(NAMES)}"])
    return builders.build_model(cfg)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """JPEG and PNG files of mixed sizes (a.jpg and d.jpg share a size), a file that is not an
    image and a sub-directory (neither read)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "sub").mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "sub" / "e.png")
    return root


def _threshold(model, images):
    """A score threshold that drops some of the random model's detections."""
    scores = np.concatenate([r["scores"] for r in model.detect(images)])
    return float(np.median(scores))


def _check_same_detections(records, expected, threshold, size):
    """results.json records of one image == ``detect``'s detections with score >= threshold."""
    keep = expected["scores"] >= threshold
    assert keep.sum() == len(records)
    boxes = expected["boxes"][keep]
    np.testing.assert_allclose(np.reshape([r["bbox"] for r in records], (-1, 4)),
                               np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1),
                               atol=1e-4)
    np.testing.assert_allclose([r["score"] for r in records], expected["scores"][keep],
                               atol=1e-6)
    assert [r["category_id"] for r in records] == expected["labels"][keep].tolist()
    assert [r["category_name"] for r in records] == [
        NAMES[IDS.index(c)] for c in expected["labels"][keep]]
    for r, mask in zip(records, expected["masks"][keep]):
        assert r["segmentation"]["size"] == list(size)
        rle = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
    if "keypoints" not in expected:
        assert all("keypoints" not in r for r in records)
        return
    for r, kp in zip(records, expected["keypoints"][keep]):
        np.testing.assert_allclose(r["keypoints"], kp.reshape(-1), atol=1e-4)


def test_folder_results_match_detect_and_load_in_pycocotools(model, folder, tmp_path):
    kind, entries = media.list_inputs(str(folder))
    assert kind == "directory" and [n for _, n in entries] == sorted(SIZES)
    images = [predict.read_image(p) for p, _ in entries]
    threshold = _threshold(model, images)
    out = prediction.predict_to_directory(model, kind, entries, str(tmp_path), threshold,
                                          batch_size=BATCH, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == json.loads(json.dumps(out["results"]))
    total = sum(len(r["scores"]) for r in model.detect(images))
    assert 0 < len(results) < total  # the threshold keeps some, not all
    for image_id, (image, (_, name)) in enumerate(zip(images, entries), start=1):
        records = [r for r in results if r["file_name"] == name]
        assert {r["image_id"] for r in records} <= {image_id}
        _check_same_detections(records, model.detect([image])[0], threshold, SIZES[name])
        with Image.open(tmp_path / (os.path.splitext(name)[0] + ".png")) as drawn:
            assert drawn.size == image.shape[1::-1]
    # pycocotools: a COCO built from the images (ours, not the written images.json) ...
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "file_name": n, "height": SIZES[n][0],
                              "width": SIZES[n][1]} for i, n in enumerate(sorted(SIZES), 1)],
                  "categories": [{"id": i, "name": n} for i, n in zip(IDS, NAMES)]}
    gt.createIndex()
    loaded = gt.loadRes(str(tmp_path / "results.json"))
    assert len(loaded.anns) == len(results)
    # ... and the written images.json, whose categories carry the model's names.
    written = COCO(str(tmp_path / "images.json"))
    assert [c["name"] for c in written.loadCats(IDS)] == NAMES
    ann = written.loadRes(str(tmp_path / "results.json")).anns[1]
    assert written.annToMask(ann).shape == SIZES[results[0]["file_name"]]


def test_glob_per_image_json_and_unreadable_files(model, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"not a png")
    try:
        kind, entries = media.list_inputs(str(folder / "**" / "*.png"))
        assert kind == "glob"
        assert [n for _, n in entries] == ["b.png", "broken.png", "c.png", "sub/e.png"]
        with pytest.warns(UserWarning, match="broken.png"):
            out = prediction.predict_to_directory(model, kind, entries, str(tmp_path), 0.0,
                                                  batch_size=BATCH, per_image_json=True,
                                                  draw=False, progress=False)
    finally:
        os.remove(folder / "broken.png")
    assert out["skipped"] == ["broken.png"]
    assert [(e["id"], e["file_name"]) for e in out["images"]] == [
        (1, "b.png"), (3, "c.png"), (4, "sub/e.png")]
    info = json.loads((tmp_path / "images.json").read_text())
    assert info["info"]["skipped"] == ["broken.png"] and len(info["images"]) == 3
    per_image = json.loads((tmp_path / "per_image" / "sub" / "e.json").read_text())
    assert per_image["file_name"] == "sub/e.png"
    assert (per_image["height"], per_image["width"]) == (40, 50)
    assert per_image["detections"] == [r for r in out["results"] if r["image_id"] == 4]
    assert not list(tmp_path.glob("*.png"))  # draw=False


def test_video_gives_annotated_video_with_the_same_frames(model, tmp_path):
    pytest.importorskip("av")
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (75, 99, 3), dtype=np.uint8) for _ in range(5)]  # odd
    path = str(tmp_path / "clip.mp4")
    with media.VideoWriter(path, 10) as writer:
        for frame in frames:
            writer.write(frame)
    decoded = list(media.read_video_frames(path))  # the pixels the model sees (lossy codec)
    assert len(decoded) == 5 and decoded[0].shape == (76, 100, 3)  # padded to even
    kind, entries = media.list_inputs(path)
    assert kind == "video"
    out = prediction.predict_to_directory(model, kind, entries, str(tmp_path / "out"), 0.0,
                                          batch_size=BATCH, progress=False)
    annotated = str(tmp_path / "out" / "clip.annotated.mp4")
    assert out["output_video"] == annotated
    assert len(list(media.read_video_frames(annotated))) == 5
    assert media.video_info(annotated)["rate"] == 10
    assert [(e["id"], e["frame_index"], e["file_name"]) for e in out["images"]] == [
        (i + 1, i, "clip.mp4") for i in range(5)]
    expected = model.detect(decoded[3:4])[0]
    records = [r for r in out["results"] if r["frame_index"] == 3]
    _check_same_detections(records, expected, 0.0, (76, 100))


def test_batched_detect_equals_detect(model, folder):
    from keras_maskrcnn.batch_inference import BatchDetector

    images = [predict.read_image(folder / n) for n in sorted(SIZES)]
    images.append(images[0][:, ::-1].copy())  # a third image of a.jpg's size
    got = prediction.batch_detector(model, BATCH).detect(images)
    for g, e in zip(got, model.detect(images)):
        assert g.keys() == e.keys()
        for key in e:
            np.testing.assert_allclose(g[key], e[key], atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        BatchDetector(model, 0)
    with pytest.raises(ValueError, match="uint8"):
        prediction.batch_detector(model, BATCH).detect([images[0].astype(np.float32)])


def test_list_inputs_errors_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        media.list_inputs(str(tmp_path / "missing"))
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="no image files"):
        media.list_inputs(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no image files"):
        media.list_inputs(str(tmp_path / "*.jpg"))
    (tmp_path / "one.JPG").write_bytes(b"")
    assert media.list_inputs(str(tmp_path / "one.JPG")) == (
        "file", [(str(tmp_path / "one.JPG"), "one.JPG")])
    assert media.list_inputs(str(tmp_path))[1][0][1] == "one.JPG"  # suffix case ignored
    assert prediction.drawing_names(["a.jpg", "a.png", "b.jpg", "s/c.tif"]) == [
        "a.jpg.png", "a.png.png", "b.png", "s/c.png"]


def test_drawings_never_overwrite_inputs(model, folder):
    kind, entries = media.list_inputs(str(folder))
    with pytest.raises(ValueError, match="would overwrite the input image"):
        prediction.predict_to_directory(model, kind, entries, str(folder), progress=False)


@pytest.mark.slow
def test_cli_folder_names_from_the_config(model, folder, tmp_path, capsys):
    """A run's config.yaml carries ids and names: no annotation file is read."""
    from keras_maskrcnn import config

    cfg_path, weights = str(tmp_path / "config.yaml"), str(tmp_path / "w.weights.h5")
    cfg = config.load_config(TINY, ["model.roi_heads.score_threshold=0.0",
                                    f"model.category_ids={IDS}",
                                    f"model.category_names={json.dumps(NAMES)}",
                                    "data.synthetic.output_dir=/nonexistent"])
    config.save_config(cfg, cfg_path)
    model.save_weights(weights)
    results = predict.main(["--config", cfg_path, "--weights", weights, "--input",
                            str(folder / "*.jpg"), "--output", str(tmp_path / "out"),
                            "--score-threshold", "0.2", "--batch-size", "2", "--no-draw"])
    printed = capsys.readouterr().out
    assert "2 images" in printed and "no annotations json" not in printed
    assert {r["file_name"] for r in results} == {"a.jpg", "d.jpg"}
    assert all(r["score"] >= 0.2 for r in results)
    assert {r["category_name"] for r in results} <= set(NAMES)
    expected = model.detect([predict.read_image(folder / "d.jpg")])[0]
    _check_same_detections([r for r in results if r["file_name"] == "d.jpg"], expected, 0.2,
                           SIZES["d.jpg"])


@pytest.mark.slow
def test_yolact_folder_matches_detect(folder, tmp_path):
    """YOLACT (image-sized masks, square resize: every image one group): results.json holds
    detect's detections whose integer box is not empty, as the evaluation."""
    from keras_maskrcnn import builders, config

    cfg = config.load_config(os.path.join(support.ROOT, "configs", "yolact_shapes.yaml"), [
        "model.yolact.score_threshold=0.0", f"model.category_ids={IDS}",
        f"model.category_names={json.dumps(NAMES)}"])
    yolact = builders.build_model(cfg)
    kind, entries = media.list_inputs(str(folder))
    out = prediction.predict_to_directory(yolact, kind, entries, str(tmp_path), 0.0,
                                          batch_size=4, draw=False, progress=False)
    for (path, name), entry in zip(entries, out["images"]):
        expected = yolact.detect([predict.read_image(path)])[0]
        boxes = expected["boxes"]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        expected = {k: v[area > 0] for k, v in expected.items()}
        records = [r for r in out["results"] if r["image_id"] == entry["id"]]
        _check_same_detections(records, expected, 0.0, SIZES[name])
