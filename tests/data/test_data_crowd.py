"""Crowd regions (COCO ``iscrowd``): kept apart as ``gt_crowd_boxes`` for YOLACT's matching
(COCO JSON and TFRecord sources), transformed like the boxes, absent from Mask R-CNN's batches."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_maskrcnn import build_model, run
from keras_maskrcnn.config import InputConfig, load_config
from keras_maskrcnn.data import augment, coco, pipeline, tfrecord, transforms
from support import CONFIGS
from support import models as models_support

INPUT = InputConfig(min_size_train=(48, 64), min_size_test=64, max_size=96, max_instances=4)
# (id, height, width, [(x1, y1, x2, y2), category, iscrowd])
IMAGES = [(1, 80, 100, [((10, 10, 40, 50), 9, 0), ((50, 5, 95, 70), 4, 1)]),
          (2, 64, 64, [((8, 8, 40, 30), 4, 0)]),
          (3, 60, 90, [((5, 5, 60, 50), 9, 1)])]  # a crowd region only: no training GT


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The COCO json and images, and the same written as TFRecords (2 shards)."""
    root = tmp_path_factory.mktemp("crowd")
    images, annotations = [], []
    for image_id, h, w, objects in IMAGES:
        pixels = np.full((h, w, 3), 100, np.uint8)
        for i, ((x1, y1, x2, y2), cat, crowd) in enumerate(objects):
            pixels[y1:y2, x1:x2] = (200, 50 * i, 30)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": crowd,
                "area": (x2 - x1) * (y2 - y1),
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
        Image.fromarray(pixels).save(root / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
    ann_file = str(root / "instances.json")
    with open(ann_file, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 9, "name": "nine"}, {"id": 4, "name": "four"}]}, f)
    tfrecord.write_tfrecords(ann_file, str(root), str(root / "rec" / "train"), 2,
                             progress=False)
    return {"annotations": ann_file, "images": str(root),
            "pattern": str(root / "rec" / "train-*.tfrecord")}


def _sources(files):
    return {"coco": coco.load_coco(files["annotations"], files["images"]),
            "tfrecord": tfrecord.load_tfrecords(files["pattern"], files["annotations"])}


def _by_id(dataset):
    """{image id: {key: value}} of evaluation batches."""
    out = {}
    for batch in dataset:
        b = {k: v.numpy() for k, v in batch.items()}
        for i, image_id in enumerate(b["image_ids"]):
            out[int(image_id)] = {k: v[i] for k, v in b.items()}
    return out


@pytest.mark.parametrize("kind", ["coco", "tfrecord"])
def test_crowd_boxes_are_resized_like_boxes_and_change_nothing_else(files, kind):
    source = _sources(files)[kind]
    with_crowd = _by_id(pipeline.build_dataset(source, INPUT, 2, False, with_crowd=True))
    without = _by_id(pipeline.build_dataset(source, INPUT, 2, False))
    assert sorted(with_crowd) == [1, 2, 3]
    for image_id, h0, w0, objects in IMAGES:
        got, plain = with_crowd[image_id], without[image_id]
        assert set(got) - set(plain) == {"gt_crowd_boxes"}  # Mask R-CNN's batch: no crowd key
        for key in plain:  # and the crowd regions are in none of its gt_* rows
            np.testing.assert_array_equal(got[key], plain[key], err_msg=f"{image_id} {key}")
        h, w = got["image_sizes"]
        ratios = np.array([w / w0, h / h0] * 2, np.float32)
        crowd = [box for box, _, is_crowd in objects if is_crowd]
        regular = [box for box, _, is_crowd in objects if not is_crowd]
        rows = got["gt_crowd_boxes"]
        assert rows.shape == got["gt_boxes"].shape  # padded to the batch's rows, like gt_boxes
        np.testing.assert_allclose(rows[:len(crowd)], np.array(crowd).reshape(-1, 4) * ratios,
                                   rtol=1e-6)
        assert (rows[len(crowd):] == -1).all()
        assert int((got["gt_classes"] > 0).sum()) == len(regular)


def test_tfrecord_crowd_boxes_equal_the_coco_path(files):
    sources = _sources(files)
    a, b = (_by_id(pipeline.build_dataset(sources[k], INPUT, 3, False, with_crowd=True))
            for k in ("coco", "tfrecord"))
    for image_id in a:
        for key in a[image_id]:
            np.testing.assert_array_equal(a[image_id][key], b[image_id][key])


def test_flip_and_augmentation_move_crowd_boxes_with_the_boxes():
    """A crowd box equal to a box stays equal to it through every augmentation draw."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), np.uint8)
    boxes = np.array([[10, 10, 50, 60], [60, 20, 115, 85], [2, 70, 5, 72]], np.float32)
    example = {"image": image, "boxes": boxes, "classes": np.array([1, 2, 3], np.int32),
               "crowd_boxes": boxes[1:], "image_id": np.int64(1)}
    flipped = transforms.flip_example(example)
    np.testing.assert_array_equal(flipped["crowd_boxes"], flipped["boxes"][1:])
    again = transforms.flip_example(flipped)
    np.testing.assert_array_equal(again["crowd_boxes"], boxes[1:])
    resized = transforms.resize_example(example, 60, 100)
    np.testing.assert_array_equal(resized["crowd_boxes"], resized["boxes"][1:])
    cropped = 0
    for seed in range(24):
        out = augment.ssd_augment(example, tf.constant([seed, 1]))
        # boxes 1 and 2 (classes 2, 3) are kept, clipped, moved and dropped exactly as their
        # crowd copies (same centre rule, same size rule)
        copies = out["boxes"].numpy()[out["classes"].numpy() > 1]
        np.testing.assert_array_equal(out["crowd_boxes"].numpy(), copies, err_msg=str(seed))
        cropped += out["image"].shape[:2] != image.shape[:2]
    assert cropped > 4  # expand and crop happened


def _train_config(files, kind, **extra):
    split = {"coco": {"data.train.format": "coco", "data.train.annotations": files["annotations"],
                      "data.train.images": files["images"]},
             "tfrecord": {"data.train.format": "tfrecord", "data.train.tfrecords": files["pattern"],
                          "data.train.annotations": files["annotations"]}}[kind]
    overrides = models_support.tiny_yolact_overrides(**split, **{
        "train.batch_size": 2, "data.cache": False, "input.max_instances": 4,
        "data.flip_probability": 0.0}, **extra)
    return load_config(os.path.join(CONFIGS, "yolact_shapes.yaml"), overrides=overrides)


@pytest.fixture(scope="module")
def yolact_model():
    return build_model(models_support.tiny_yolact_config())


def _anchors(model, batch):
    images, sizes = batch["images"], batch["image_sizes"]
    features = model.fpn(model.backbone(model.preprocessor.normalize(images, sizes)))
    return model.anchors(images, features).numpy()


@pytest.mark.parametrize("kind", ["coco", "tfrecord"])
def test_crowd_region_reaches_yolact_matching_as_neutral_anchors(files, kind, yolact_model):
    """A COCO file's crowd annotation -> run.train_dataset -> YOLACT: the anchors the crowd box
    covers (intersection / anchor area > 0.7) that would be negatives are neutral instead."""
    cfg = _train_config(files, kind)
    dataset, _ = run.train_dataset(cfg, 0)
    batch = {k: v.numpy() for k, v in next(iter(dataset)).items()}
    assert sorted(batch["image_ids"]) == [1, 2]  # image 3 (a crowd region only) filtered out
    i = list(batch["image_ids"]).index(1)
    scale = np.array([128 / 100, 128 / 80] * 2, np.float32)  # fixed 128 px square
    np.testing.assert_allclose(batch["gt_crowd_boxes"][i, 0], np.array([50, 5, 95, 70]) * scale,
                               rtol=1e-6)
    assert batch["gt_crowd_boxes"].shape == (2, 4, 4)  # max_instances rows, like gt_boxes
    assert (batch["gt_crowd_boxes"][1 - i] == -1).all()
    plain = {k: v for k, v in batch.items() if k != "gt_crowd_boxes"}
    out = yolact_model(batch, training=True)
    ref = yolact_model(plain, training=True)
    labels, ref_labels = out["labels"].numpy(), ref["labels"].numpy()
    anchors, crowd = _anchors(yolact_model, batch), batch["gt_crowd_boxes"][i, 0]
    lt, rb = np.maximum(anchors[:, :2], crowd[:2]), np.minimum(anchors[:, 2:], crowd[2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    covered = inter / np.prod(anchors[:, 2:] - anchors[:, :2], axis=1) > 0.7
    expected = ref_labels.copy()
    expected[i] = np.where(covered & (ref_labels[i] <= 0), -1, ref_labels[i])
    np.testing.assert_array_equal(labels, expected)
    assert (covered & (ref_labels[i] == 0)).sum() >= 10  # negatives made neutral
    positive = labels > 0
    np.testing.assert_array_equal(out["matched_gt"].numpy()[positive],
                                  ref["matched_gt"].numpy()[positive])
    for name, value in yolact_model.compute_losses(out).items():
        assert np.isfinite(value.numpy()), name


def test_mask_rcnn_training_batches_have_no_crowd_key(files):
    cfg = load_config(os.path.join(CONFIGS, "tiny.yaml"), overrides=[
        "data.train.format=coco", f"data.train.annotations={files['annotations']}",
        f"data.train.images={files['images']}", "train.batch_size=2", "data.cache=false"])
    dataset, _ = run.train_dataset(cfg, 0)
    assert "gt_crowd_boxes" not in dataset.element_spec


def test_ssd_augmented_yolact_batches_carry_crowd_boxes_inside_the_image(files, yolact_model):
    dataset, _ = run.train_dataset(_train_config(files, "coco", **{"data.augment": "ssd"}), 0)
    seen = 0
    for batch in dataset.take(6):
        crowd = batch["gt_crowd_boxes"].numpy()
        assert crowd.shape == (2, 4, 4)
        real = crowd[..., 2] > crowd[..., 0]
        assert (crowd[~real] == -1).all()
        assert (crowd[real] >= 0).all() and (crowd[real] <= 128).all()
        seen += real.sum()
    assert seen > 0
    assert np.isfinite(yolact_model.compute_losses(yolact_model(batch, training=True))["class"])
