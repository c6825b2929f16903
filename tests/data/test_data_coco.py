"""keras_maskrcnn.data.coco: validation errors, category mapping, GT against pycocotools."""
import copy
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_maskrcnn.data import coco as C
from keras_maskrcnn.data import coco_json as J
from keras_maskrcnn.data import synthetic
from support.data import write_defective_file


def _square_rle(h, w, box):
    mask = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 1
    return mask, mask_utils.encode(np.asfortranarray(mask))


def _tiny(tmp_path, write_images=True):
    """A hand-made dataset: 3 images (one without annotations), categories 5 and 2."""
    _, rle = _square_rle(20, 30, (10, 5, 20, 15))
    data = {
        "images": [{"id": 10, "file_name": "a.jpg", "height": 20, "width": 30},
                   {"id": 4, "file_name": "b.png", "height": 16, "width": 16},
                   {"id": 7, "file_name": "c.jpg", "height": 20, "width": 30}],
        "categories": [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [2, 3, 6, 4], "iscrowd": 0,
             "segmentation": [[2, 3, 8, 3, 8, 7, 2, 7]], "area": 24},
            {"id": 2, "image_id": 10, "category_id": 2, "bbox": [10, 5, 10, 10], "iscrowd": 0,
             "segmentation": {"counts": rle["counts"].decode(), "size": [20, 30]}},
            {"id": 3, "image_id": 10, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1,
             "segmentation": synthetic._uncompressed_rle(np.ones((20, 30), bool))},
            {"id": 4, "image_id": 4, "category_id": 5, "bbox": [10, 1, 10, 10.5], "iscrowd": 0,
             "segmentation": [[10, 1, 20, 1, 20, 11.5, 10, 11.5]]},
            {"id": 5, "image_id": 4, "category_id": 5, "bbox": [3, 3, 0.5, 4], "iscrowd": 0,
             "segmentation": [[3, 3, 3.5, 3, 3.5, 7]]},
        ],
    }
    if write_images:
        for image in data["images"]:
            Image.new("RGB", (image["width"], image["height"]), (9, 99, 199)).save(
                tmp_path / image["file_name"])
    return data


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_category_map_round_trip():
    cmap = C.CategoryMap.from_categories([{"id": 7, "name": "rect"}, {"id": 1, "name": "circ"},
                                          {"id": 3, "name": "tri"}])
    assert cmap.dataset_ids == (1, 3, 7) and cmap.names == ("circ", "tri", "rect")
    assert cmap.num_classes == 4
    ids = np.array([[7, 1], [3, 3]])
    np.testing.assert_array_equal(cmap.to_contiguous(ids), [[3, 1], [2, 2]])
    np.testing.assert_array_equal(cmap.to_dataset(cmap.to_contiguous(ids)), ids)
    assert cmap.to_dataset(cmap.to_contiguous(3)) == 3 and cmap.to_contiguous(7) == 3
    assert cmap.name(1) == "circ"
    assert cmap.to_contiguous(np.zeros((0,), int)).shape == (0,)
    with pytest.raises(KeyError):
        cmap.to_contiguous(2)
    with pytest.raises(IndexError):
        cmap.to_dataset(0)  # background has no dataset id
    with pytest.raises(IndexError):
        cmap.to_dataset([1, 4])


def test_tiny_dataset(tmp_path):
    ds = C.load_coco(_write(tmp_path, _tiny(tmp_path)), str(tmp_path))
    assert [r.image_id for r in ds.images] == [4, 7, 10]  # sorted by id
    assert ds.categories.dataset_ids == (2, 5)
    assert ds.stats.num_crowd == 1 and ds.stats.num_degenerate == 1
    b, c, a = ds.images  # ids 4, 7, 10
    np.testing.assert_allclose(b.boxes, [[10, 1, 16, 11.5]])  # clipped to the 16 px width
    assert len(c.classes) == 0  # no annotations: a valid negative image
    np.testing.assert_allclose(a.boxes, [[2, 3, 8, 7], [10, 5, 20, 15]])
    np.testing.assert_array_equal(a.classes, [2, 1])  # dataset 5 -> 2, dataset 2 -> 1
    ex = ds.load_example(2)
    assert ex["image"].shape == (20, 30, 3) and ex["image"].dtype == np.uint8
    assert ex["image_id"] == 10 and ex["masks"].shape == (2, 20, 30)
    np.testing.assert_array_equal(ex["masks"][1], _square_rle(20, 30, (10, 5, 20, 15))[0])
    empty = ds.load_example(1)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 20, 30)
    assert empty["classes"].dtype == np.int32
    assert "keypoints" not in empty
    assert ds.load_example(2, max_instances=1)["masks"].shape == (1, 20, 30)
    assert ds.stats.num_truncated_images == 1


def test_matches_pycocotools_on_synthetic(tmp_path):
    paths = synthetic.write_synthetic_dataset(str(tmp_path), 12, 1, seed=1, image_size=64)
    ds = C.load_coco(*paths["train"], num_keypoints=4)
    ref = COCO(paths["train"][0])
    assert ds.keypoint_names == ("top", "right", "bottom", "left")
    assert ds.skeleton == synthetic.SKELETON
    num_crowd = 0
    for i, record in enumerate(ds.images):
        anns = ref.loadAnns(ref.getAnnIds(imgIds=record.image_id))
        num_crowd += sum(a["iscrowd"] for a in anns)
        anns = [a for a in anns if not a["iscrowd"]]
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        np.testing.assert_allclose(record.boxes, boxes, rtol=1e-6)
        np.testing.assert_array_equal(ds.categories.to_dataset(record.classes),
                                      [a["category_id"] for a in anns])
        ex = ds.load_example(i)
        masks = np.array([ref.annToMask(a) for a in anns]).reshape(-1, 64, 64)
        np.testing.assert_array_equal(ex["masks"], masks)
        kps = np.array([a["keypoints"] for a in anns], np.float32).reshape(-1, 4, 3)
        np.testing.assert_allclose(ex["keypoints"], kps)
    assert ds.stats.num_crowd == num_crowd


def test_decode_segmentation_formats_agree():
    mask, rle = _square_rle(9, 11, (2, 3, 7, 8))
    poly = [[2, 3, 7, 3, 7, 8, 2, 8]]
    compressed = {"counts": rle["counts"].decode(), "size": [9, 11]}
    uncompressed = synthetic._uncompressed_rle(mask.astype(bool))
    for segm in (poly, compressed, uncompressed):
        np.testing.assert_array_equal(C.decode_segmentation(segm, 9, 11), mask)
    # A 2-point "polygon" first in the list makes pycocotools take the list for boxes; we
    # ignore such polygons (mutation: the naive call fails).
    trap = [[1, 1, 2, 2]] + poly
    np.testing.assert_array_equal(C.decode_segmentation(trap, 9, 11), mask)
    with pytest.raises(TypeError):
        mask_utils.frPyObjects(trap, 9, 11)
    assert C.decode_segmentation([[1, 1, 2, 2]], 9, 11).sum() == 0


def test_missing_segmentation_and_keypoints(tmp_path):
    data = _tiny(tmp_path)
    del data["annotations"][0]["segmentation"]
    data["annotations"][1]["keypoints"] = [1, 2, 2, 3, 4, 1]
    ds = C.load_coco(_write(tmp_path, data), str(tmp_path), num_keypoints=2)
    assert ds.stats.num_box_masks == 1
    ex = ds.load_example(2)
    np.testing.assert_array_equal(ex["masks"][0], _square_rle(20, 30, (2, 3, 8, 7))[0])
    np.testing.assert_allclose(ex["keypoints"], [[[0, 0, 0], [0, 0, 0]], [[1, 2, 2], [3, 4, 1]]])
    assert ds.load_example(0)["keypoints"].shape == (1, 2, 3)


def _mutate(data, path, value):
    """Sets data[path...] = value; value None deletes the key."""
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value


# File-level problems: errors in both modes.
FILE_ERRORS = [
    (("images", 1, "file_name"), None, r"images\[1\] \(id 4\): missing field 'file_name'"),
    (("images", 0, "height"), 0, r"images\[0\] \(id 10\): 'height' must be positive"),
    (("images", 2, "id"), 10, r"images\[2\] \(id 10\): duplicate image id 10"),
    (("images", 0, "width"), "30", r"field 'width' must be int"),
    (("categories", 1, "name"), None, r"categories\[1\] \(id 2\): missing field 'name'"),
    (("categories", 1, "id"), 5, r"duplicate category id 5"),
    (("categories",), [], r"no categories"),
    (("images",), None, r"top level: missing field 'images'"),
    (("categories",), None, r"top level: missing field 'categories'"),
    (("annotations",), {"id": 1}, r"top level: field 'annotations' must be list"),
]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("path,value,message", FILE_ERRORS)
def test_file_errors_name_file_and_field(tmp_path, path, value, message, strict):
    data = _tiny(tmp_path, write_images=False)
    _mutate(data, path, value)
    ann = _write(tmp_path, data, "bad.json")
    with pytest.raises(J.CocoFormatError, match=message) as err:
        C.load_coco(ann, str(tmp_path), strict=strict)
    assert str(err.value).startswith(ann + ": ")


# Defects of one annotation: (path, value, strict message, reason, annotation id). Strict
# mode raises the message; lenient mode leaves that annotation out and lists it.
ANNOTATION_DEFECTS = [
    (("annotations", 0, "bbox"), None, r"annotation 1: bbox: missing field 'bbox'",
     J.BAD_BBOX, 1),
    (("annotations", 1, "bbox"), [1, 2, 3], r"annotation 2: bbox: must be 4 numbers",
     J.BAD_BBOX, 2),
    (("annotations", 1, "bbox"), [1, 2, 3, "x"], r"bbox: must be 4 numbers", J.BAD_BBOX, 2),
    (("annotations", 1, "bbox"), [1, 2, -3, 4], r"annotation 2: bbox: width -3 must be > 0",
     J.NON_POSITIVE_BOX, 2),
    (("annotations", 3, "bbox"), [10, 1, 10, 0], r"annotation 4: bbox: height 0 must be > 0",
     J.NON_POSITIVE_BOX, 4),
    (("annotations", 0, "bbox"), [30, 3, 6, 4], r"annotation 1: bbox: \[30, 3, 6, 4\] lies "
     r"outside the 30x20 image 10", J.BOX_OUTSIDE_IMAGE, 1),
    (("annotations", 3, "bbox"), [-11, 1, 10, 5], r"annotation 4: bbox: .* lies outside",
     J.BOX_OUTSIDE_IMAGE, 4),
    (("annotations", 0, "category_id"), 3, r"annotation 1: category_id: 3 is not in "
     r"'categories' \[2, 5\]", J.UNKNOWN_CATEGORY, 1),
    (("annotations", 0, "category_id"), None, r"annotation 1: category_id: missing field",
     J.BAD_CATEGORY_ID, 1),
    (("annotations", 0, "image_id"), 99, r"annotation 1: image_id: 99 is not in 'images'",
     J.MISSING_IMAGE, 1),
    (("annotations", 0, "image_id"), "10", r"image_id: field 'image_id' must be int",
     J.BAD_IMAGE_ID, 1),
    (("annotations", 0, "iscrowd"), 2, r"annotation 1: iscrowd: must be 0 or 1", J.BAD_CROWD, 1),
    (("annotations", 0, "segmentation"), [[1, 2, 3]],
     r"annotation 1: segmentation: polygon 0 has an odd", J.BAD_SEGMENTATION, 1),
    (("annotations", 0, "segmentation"), [[2, 3, 8, 3, 8, 7], [2, 3, 8, 7]],
     r"annotation 1: segmentation: polygon 1 has 2 points, needs >= 3", J.SHORT_POLYGON, 1),
    (("annotations", 0, "segmentation"), [], r"annotation 1: segmentation: an empty list",
     J.EMPTY_SEGMENTATION, 1),
    (("annotations", 2, "segmentation"), synthetic._uncompressed_rle(np.zeros((20, 30), bool)),
     r"annotation 3: segmentation: an RLE without foreground", J.EMPTY_SEGMENTATION, 3),
    (("annotations", 1, "segmentation", "counts"), "hb0",  # 20x30 zeros, compressed
     r"annotation 2: segmentation: an RLE without foreground", J.EMPTY_SEGMENTATION, 2),
    (("annotations", 1, "segmentation", "size"), [30, 20], r"RLE size \[30, 20\] differs",
     J.BAD_SEGMENTATION, 2),
    (("annotations", 2, "segmentation", "counts"), [1, 2], r"annotation 3: segmentation: "
     r"uncompressed RLE counts cover 3 pixels", J.BAD_SEGMENTATION, 3),
    (("annotations", 1, "segmentation", "counts"), None,
     r"annotation 2: segmentation: missing field 'counts'", J.BAD_SEGMENTATION, 2),
    (("annotations", 1, "id"), None, r"annotations\[1\] \(no id\): bbox: width -3",
     J.NON_POSITIVE_BOX, "annotations[1]"),
    (("annotations", 0), [1, 2], r"annotations\[0\] \(no id\): annotation: expected an "
     r"object, got list", J.NOT_AN_OBJECT, "annotations[0]"),
]


def _without(data, annotation_id):
    """``data`` without the annotation ``annotation_id`` (an id, or "annotations[i]")."""
    anns = data["annotations"]
    if isinstance(annotation_id, str):
        index = int(annotation_id.split("[")[1].rstrip("]"))
    else:
        index = [a["id"] for a in anns].index(annotation_id)
    return dict(data, annotations=anns[:index] + anns[index + 1:])


@pytest.mark.parametrize("path,value,message,reason,annotation_id", ANNOTATION_DEFECTS)
def test_annotation_defect_strict_raises_lenient_leaves_out(tmp_path, path, value, message,
                                                            reason, annotation_id):
    data = _tiny(tmp_path)
    clean = copy.deepcopy(data)
    _mutate(data, path, value)
    if path == ("annotations", 1, "id"):  # the defect of the annotation without an id
        data["annotations"][1]["bbox"] = [1, 2, -3, 4]
    ann = _write(tmp_path, data, "bad.json")
    with pytest.raises(J.CocoFormatError, match=message) as err:
        C.load_coco(ann, str(tmp_path), strict=True)
    assert str(err.value).startswith(ann + ": ")
    ds = C.load_coco(ann, str(tmp_path))  # lenient (the default)
    assert ds.report.dropped == {reason: [annotation_id]} and ds.report.total == 1
    assert ds.report.num_annotations == 5
    # Exactly the other annotations: as loading the file without the bad one.
    ref = C.load_coco(_write(tmp_path, _without(clean, annotation_id), "ref.json"),
                      str(tmp_path))
    assert ref.report.total == 0
    kept = 0
    for i, (a, b) in enumerate(zip(ds.images, ref.images)):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.classes, b.classes)
        assert a.segmentations == b.segmentations
        kept += len(a.classes)
        for key, value in ds.load_example(i).items():
            np.testing.assert_array_equal(value, ref.load_example(i)[key])
    assert ds.stats.num_crowd == ref.stats.num_crowd
    assert kept + ds.stats.num_crowd + ds.stats.num_degenerate == 4  # 5 annotations, 1 left out


def test_keypoint_length_error_and_unreadable_files(tmp_path):
    data = _tiny(tmp_path, write_images=False)
    data["annotations"][0]["keypoints"] = [1, 2, 2] * 3
    ann = _write(tmp_path, data, "kp.json")
    with pytest.raises(J.CocoFormatError, match=r"kp.json: annotation 1: keypoints: must be 12 "
                                                r"numbers"):
        C.load_coco(ann, str(tmp_path), num_keypoints=4, strict=True)
    lenient = C.load_coco(ann, str(tmp_path), num_keypoints=4)
    assert lenient.report.dropped == {J.BAD_KEYPOINTS: [1]}
    assert [len(r.classes) for r in lenient.images] == [1, 0, 1]  # ids 4, 7, 10
    loaded = C.load_coco(ann, str(tmp_path), strict=True)  # keypoints not checked when not asked
    assert loaded.report.total == 0 and [len(r.classes) for r in loaded.images] == [1, 0, 2]
    for strict in (False, True):  # file-level problems are errors in both modes
        with pytest.raises(J.CocoFormatError, match="missing.json: cannot read"):
            C.load_coco(str(tmp_path / "missing.json"), str(tmp_path), strict=strict)
        (tmp_path / "broken.json").write_text('{"images": [')
        with pytest.raises(J.CocoFormatError, match="broken.json: invalid JSON"):
            C.load_coco(str(tmp_path / "broken.json"), str(tmp_path), strict=strict)
        with pytest.raises(J.CocoFormatError, match="top level: expected an object"):
            C.load_coco(_write(tmp_path, [1, 2], "list.json"), str(tmp_path), strict=strict)


def test_unreadable_images_are_skipped_counted_and_named(tmp_path, caplog):
    data = _tiny(tmp_path)
    ds = C.load_coco(_write(tmp_path, data), str(tmp_path))
    jpeg = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated jpeg
    Image.new("RGB", (5, 5)).save(tmp_path / "b.png")  # wrong size for its annotations
    os.remove(tmp_path / "c.jpg")  # missing
    with caplog.at_level(logging.WARNING, logger="keras_maskrcnn.data.coco"):
        assert [ds.load_example(i) for i in range(3)] == [None] * 3
        assert ds.load_example(2) is None  # a known bad image is not read or warned again
    assert ds.stats.num_skipped == 3
    names = [os.path.basename(p) for p, _ in ds.stats.skipped_images]
    assert sorted(names) == ["a.jpg", "b.png", "c.jpg"]
    text = caplog.text
    assert "a.jpg" in text and "truncated" in text.lower() and "b.png" in text and "5x5" in text
    assert text.count("skipping image") == 3
    # Mutation: the intact file decodes (the failure came from the truncation).
    (tmp_path / "a.jpg").write_bytes(jpeg)
    fresh = C.load_coco(_write(tmp_path, copy.deepcopy(data), "again.json"), str(tmp_path))
    assert fresh.load_example(2) is not None


def test_corrupt_rle_string_is_left_out_when_loaded(tmp_path):
    """A compressed RLE string pycocotools cannot read is a defect of its annotation, found
    when the file is loaded (``coco_json.compressed_rle_counts``), not when its image is."""
    data = _tiny(tmp_path)
    data["annotations"][1]["segmentation"]["counts"] = "zz!!"
    ds = C.load_coco(_write(tmp_path, data), str(tmp_path))
    assert ds.report.dropped == {J.BAD_SEGMENTATION: [2]}
    assert "annotation 2: segmentation: compressed RLE counts: character 'z' at 0" in \
        ds.report.first_problem[J.BAD_SEGMENTATION]
    example = ds.load_example(2)  # image 10 keeps its other annotation
    assert example is not None and len(example["masks"]) == 1 and ds.stats.num_skipped == 0


# ----------------------------------------------------------------------------- 28 annotations
NUM_KEYPOINTS = len(synthetic.KEYPOINT_NAMES)


def test_lenient_loads_the_good_annotations_of_28_and_lists_the_13_bad(tmp_path):
    files = write_defective_file(tmp_path)
    ds = C.load_coco(files["bad"], files["images"], num_keypoints=NUM_KEYPOINTS)
    ref = C.load_coco(files["clean"], files["images"], num_keypoints=NUM_KEYPOINTS)
    report = ds.report
    assert report.num_annotations == 28 and report.total == 13
    assert report.dropped == {reason: [i] for reason, i in files["ids"].items()}
    assert report.counts == {reason: 1 for reason in J.REASONS}
    assert ref.report.num_annotations == 15 and ref.report.total == 0
    # The examples hold exactly the good annotations (crowd regions aside, as always).
    instances = 0
    for i in range(len(ds)):
        example, expected = ds.load_example(i), ref.load_example(i)
        assert example.keys() == expected.keys()
        for key in example:
            np.testing.assert_array_equal(example[key], expected[key])
        instances += len(example["classes"])
    assert instances == sum(not a["iscrowd"] for a in files["good"]) > 0
    summary = report.summary()
    assert summary.startswith(f"{files['bad']}: 28 annotations, 13 left out")
    for reason, i in files["ids"].items():
        assert f"\n  {reason}: 1 (ids {i}; first: " in summary
    assert "annotation 1000: bbox: width -3 must be > 0" in summary
    assert ref.report.summary() == f"{files['clean']}: 15 annotations, none left out"


def test_strict_raises_for_the_first_defect_naming_file_id_and_field(tmp_path):
    files = write_defective_file(tmp_path)
    with pytest.raises(J.CocoFormatError) as err:
        C.load_coco(files["bad"], files["images"], NUM_KEYPOINTS, strict=True)
    assert str(err.value) == (f"{files['bad']}: annotation 1000: bbox: width -3 must be > 0 "
                              "(bbox [10, 10, -3, 5])")
    strict = C.load_coco(files["clean"], files["images"], NUM_KEYPOINTS, strict=True)
    lenient = C.load_coco(files["clean"], files["images"], NUM_KEYPOINTS)
    for a, b in zip(strict.images, lenient.images):  # a clean file: the same either way
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)


def test_report_summary_lists_the_first_ids(tmp_path):
    data = _tiny(tmp_path, write_images=False)
    data["annotations"] += [dict(data["annotations"][0], id=100 + i, bbox=[1, 1, 0, 2])
                            for i in range(7)]
    ds = C.load_coco(_write(tmp_path, data), str(tmp_path))
    assert ds.report.dropped == {J.NON_POSITIVE_BOX: list(range(100, 107))}
    assert ds.report.total == 7 and ds.report.num_annotations == 12
    lines = ds.report.summary().splitlines()
    assert len(lines) == 2 and "12 annotations, 7 left out" in lines[0]
    assert lines[1].startswith(f"  {J.NON_POSITIVE_BOX}: 7 (ids 100, 101, 102, 103, 104, ...; "
                               "first: annotation 100: bbox: width 0 must be > 0")
    assert "ids 100, 101, 102" in ds.report.summary(max_ids=3)


def test_training_and_evaluation_entry_points_print_the_report(tmp_path, capsys):
    """run.train / run.evaluate print the loader's summary; evaluate.py prints it too and
    stops with the strict error under data.strict."""
    import subprocess
    import sys

    from keras_maskrcnn import run
    from support import ROOT
    files = write_defective_file(tmp_path)
    run.report_annotations(C.load_coco(files["bad"], files["images"],
                                       num_keypoints=NUM_KEYPOINTS))
    assert capsys.readouterr().out.startswith(f"{files['bad']}: 28 annotations, 13 left out")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"base: {os.path.join(ROOT, 'configs', 'tiny.yaml')}\n"
                   f"data:\n  val: {{format: coco, annotations: {files['bad']}, "
                   f"images: {files['images']}}}\n")
    weights = tmp_path / "missing.weights.h5"
    for strict, expected in ((False, "28 annotations, 12 left out"),  # no keypoint check
                             (True, "annotation 1000: bbox: width -3 must be > 0")):
        run_ = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--config",
                               str(cfg), "--weights", str(weights), "--set",
                               f"data.strict={str(strict).lower()}"],
                              capture_output=True, text=True, timeout=300)
        assert run_.returncode == 2  # the weights file is missing: checked after the report
        assert expected in run_.stdout + run_.stderr
