"""keras_maskrcnn.data.synthetic: a valid, consistent, deterministic COCO-format dataset."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_maskrcnn.config import SyntheticConfig
from keras_maskrcnn.data import synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    paths = synthetic.write_synthetic_dataset(str(out), 40, 6, seed=3, image_size=96,
                                              min_objects=1, max_objects=4)
    return out, paths


def _load(paths, split):
    return COCO(paths[split][0])


def test_layout_and_pycocotools_loads(dataset):
    out, paths = dataset
    for split, count in (("train", 40), ("val", 6)):
        ann_file, image_dir = paths[split]
        assert ann_file == os.path.join(out, "annotations", f"instances_{split}.json")
        coco = _load(paths, split)
        assert len(coco.getImgIds()) == count
        for info in coco.loadImgs(coco.getImgIds()):
            with Image.open(os.path.join(image_dir, info["file_name"])) as im:
                assert im.size == (info["width"], info["height"]) == (96, 96)
                assert im.mode == "RGB"
    exts = {f.rsplit(".", 1)[1] for f in os.listdir(paths["train"][1])}
    assert exts == {"jpg", "png"}
    with open(os.path.join(out, "dataset_info.json")) as f:
        assert json.load(f)["num_train"] == 40


def test_categories_and_keypoint_fields(dataset):
    coco = _load(dataset[1], "train")
    cats = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"]) for c in cats] == [(1, "circle"), (3, "triangle"),
                                                     (7, "rectangle")]
    for c in cats:
        assert c["keypoints"] == ["top", "right", "bottom", "left"]
        assert c["skeleton"] == [[1, 2], [2, 3], [3, 4], [4, 1]]  # COCO: 1-based
    used = {a["category_id"] for a in coco.dataset["annotations"]}
    assert used == {1, 3, 7}


def test_annotations_match_their_masks(dataset):
    coco = _load(dataset[1], "train")
    kinds = set()
    for ann in coco.dataset["annotations"]:
        mask = coco.annToMask(ann)
        rle = mask_utils.encode(np.asfortranarray(mask))
        np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(rle), atol=1e-6)
        assert ann["area"] == mask.sum() > 0
        segm = ann["segmentation"]
        kind = "polygon" if isinstance(segm, list) else type(segm["counts"]).__name__
        kinds.add((kind, ann["iscrowd"]))
        if ann["iscrowd"]:
            assert kind == "list" and ann["num_keypoints"] == 0 and not any(ann["keypoints"])
    assert {("polygon", 0), ("str", 0), ("list", 1)} <= kinds


def test_visible_masks_are_disjoint_and_keypoints_consistent(dataset):
    coco = _load(dataset[1], "train")
    counts = {0: 0, 1: 0, 2: 0}
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        masks = np.array([coco.annToMask(a) for a in anns]).reshape(-1, 96, 96)
        assert masks.sum(0).max(initial=0) <= 1  # each pixel belongs to at most one region
        for ann, mask in zip(anns, masks):
            if ann["iscrowd"]:
                continue
            kps = np.array(ann["keypoints"], np.float32).reshape(4, 3)
            assert ann["num_keypoints"] == (kps[:, 2] > 0).sum()
            ys, xs = np.nonzero(mask)
            for x, y, v in kps:
                counts[int(v)] += 1
                if v == 0:
                    assert x == 0 and y == 0
                elif v == 2:  # a visible extreme point lies on its own visible mask
                    d = np.min(np.hypot(xs + 0.5 - x, ys + 0.5 - y))
                    assert d <= 2.0, (ann["id"], x, y, d)
                    assert 0 <= x <= 96 and 0 <= y <= 96
    assert min(counts.values()) > 0, counts  # visible, occluded and cut-off keypoints occur


def test_visible_keypoints_are_extreme_points(dataset):
    """For unoccluded objects inside the image the keypoints are the mask's extremes."""
    coco = _load(dataset[1], "train")
    checked = 0
    for ann in coco.dataset["annotations"]:
        kps = np.array(ann["keypoints"], np.float32).reshape(4, 3)
        if ann["iscrowd"] or not isinstance(ann["segmentation"], list) or kps[:, 2].min() < 2:
            continue
        x, y, w, h = ann["bbox"]
        top, right, bottom, left = kps[:, :2]
        assert abs(top[1] - y) <= 1.5 and abs(bottom[1] - (y + h)) <= 1.5
        assert abs(left[0] - x) <= 1.5 and abs(right[0] - (x + w)) <= 1.5
        checked += 1
    assert checked > 10


def test_deterministic_per_seed(tmp_path):
    a = synthetic.write_synthetic_dataset(str(tmp_path / "a"), 5, 2, seed=7, image_size=64)
    b = synthetic.write_synthetic_dataset(str(tmp_path / "b"), 5, 2, seed=7, image_size=64)
    c = synthetic.write_synthetic_dataset(str(tmp_path / "c"), 5, 2, seed=8, image_size=64)
    for split in ("train", "val"):
        with open(a[split][0]) as fa, open(b[split][0]) as fb, open(c[split][0]) as fc:
            ja, jb, jc = fa.read(), fb.read(), fc.read()
        assert ja == jb and ja != jc
        for name in os.listdir(a[split][1]):
            with open(os.path.join(a[split][1], name), "rb") as fa, \
                    open(os.path.join(b[split][1], name), "rb") as fb:
                assert fa.read() == fb.read()


def test_negative_images_and_bad_arguments(tmp_path):
    paths = synthetic.write_synthetic_dataset(str(tmp_path), 3, 1, image_size=48,
                                              min_objects=0, max_objects=0)
    coco = COCO(paths["train"][0])
    assert len(coco.getImgIds()) == 3
    assert all(a["iscrowd"] for a in coco.dataset["annotations"])  # crowd regions may remain
    with pytest.raises(ValueError, match="min_objects"):
        synthetic.write_synthetic_dataset(str(tmp_path), 1, 1, min_objects=3, max_objects=2)


def test_ensure_writes_once_and_rewrites_on_new_parameters(tmp_path):
    cfg = SyntheticConfig(num_train=2, num_val=1, image_size=48, output_dir=str(tmp_path))
    synthetic.ensure_synthetic_dataset(cfg)
    ann = synthetic.split_paths(str(tmp_path), "train")[0]
    stamp = os.stat(ann).st_mtime_ns
    synthetic.ensure_synthetic_dataset(cfg)
    assert os.stat(ann).st_mtime_ns == stamp
    cfg = SyntheticConfig(num_train=3, num_val=1, image_size=48, output_dir=str(tmp_path))
    synthetic.ensure_synthetic_dataset(cfg)
    assert len(COCO(ann).getImgIds()) == 3


def test_cli(tmp_path, capsys):
    synthetic.main(["--output", str(tmp_path), "--train", "2", "--val", "1", "--seed", "1",
                    "--image-size", "64"])
    assert "wrote 2 + 1 images" in capsys.readouterr().out
    assert len(COCO(synthetic.split_paths(str(tmp_path), "val")[0]).getImgIds()) == 1


# ----------------------------------------------------------------------------- helpers
def test_clip_polygon_hand_case():
    square = np.array([[-2.0, -2.0], [4.0, -2.0], [4.0, 4.0], [-2.0, 4.0]])
    clipped = synthetic._clip_polygon(square, 10, 10)
    assert {tuple(p) for p in clipped} == {(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0)}
    assert len(synthetic._clip_polygon(square - 20, 10, 10)) == 0


def test_extreme_points_ties_and_uncompressed_rle():
    square = np.array([[1.0, 1.0], [5.0, 1.0], [5.0, 3.0], [1.0, 3.0]])
    np.testing.assert_allclose(synthetic._extreme_points(square),
                               [[3, 1], [5, 2], [3, 3], [1, 2]])  # edge midpoints
    mask = np.zeros((7, 5), bool)
    mask[0, 0] = mask[2:5, 1:4] = True
    rle = synthetic._uncompressed_rle(mask)
    assert rle["counts"][0] == 0  # starts with a (here empty) run of zeros
    decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5))
    np.testing.assert_array_equal(decoded, mask)
    # Mutation: row-major runs (the wrong order for COCO) decode to another mask.
    flat = mask.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = [0] + np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    wrong = mask_utils.decode(mask_utils.frPyObjects({"counts": counts, "size": [7, 5]}, 7, 5))
    assert not np.array_equal(wrong, mask)
