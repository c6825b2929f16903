"""Cropped GT masks (``input.gt_mask_format: cropped``) through the data pipeline: the crops of
the COCO, TFRecord and synthetic sources, their resize / flip against crops of the full
masks, the config rules, and one fit step of a model trained on them."""
import json

import numpy as np
import pytest
import tensorflow as tf

from keras_maskrcnn import builders
from keras_maskrcnn.config import ConfigError, InputConfig, load_config
from keras_maskrcnn.data import coco, pipeline, synthetic, tfrecord
from keras_maskrcnn.ops.masks import (mask_crop_boxes, project_cropped_masks_on_boxes,
                                      project_masks_on_boxes)

CROP = 56
INPUT = InputConfig(min_size_train=(160, 256, 352), min_size_test=256, max_size=400,
                    max_instances=6)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """8 synthetic 256 px images (polygons and, for occluded shapes, RLE) and their records."""
    root = tmp_path_factory.mktemp("crops")
    ann_file, image_dir = synthetic.write_synthetic_dataset(
        root / "shapes", 8, 0, seed=5, image_size=256, max_objects=5)["train"]
    tfrecord.write_tfrecords(ann_file, image_dir, str(root / "rec" / "train"), 2,
                             progress=False)
    return ann_file, image_dir, str(root / "rec" / "train-*.tfrecord")


def _crops_of(full, boxes, size=CROP):
    """(M, C, C) crops of full (M, H, W) masks at the frames of ``boxes``."""
    frames = mask_crop_boxes(np.asarray(boxes, np.float32))
    return np.stack([coco.sample_mask_crop(m, f, size) for m, f in zip(full, frames)])


def test_coco_crops_equal_crops_of_the_full_masks(shapes):
    source = coco.load_coco(*shapes[:2])
    kinds, fine_agree, coarse_agree = set(), [], []
    for index in range(len(source)):
        full = source.load_example(index)
        cropped = source.load_example(index, gt_mask_size=CROP)
        assert cropped["masks"].shape == (len(full["boxes"]), CROP, CROP)
        assert cropped["masks"].dtype == np.uint8
        expected = _crops_of(full["masks"], full["boxes"])
        for segm, box, got, want in zip(source.images[index].segmentations, full["boxes"],
                                        cropped["masks"], expected):
            kind = "polygon" if isinstance(segm, list) else "rle"
            kinds.add(kind)
            if kind == "rle":  # decoded and sampled: exactly the crop of the full mask
                np.testing.assert_array_equal(got, want)
            elif max(mask_crop_boxes(box)[2:] - mask_crop_boxes(box)[:2]) <= CROP:
                fine_agree.append((got == want).mean())  # rasterised on image pixels
            else:  # rasterised on the crop's pixels: differs from the pixel staircase
                coarse_agree.append((got == want).mean())
    assert kinds == {"polygon", "rle"}
    # Crops finer than the image repeat its pixels; pycocotools' rounding is not exactly
    # invariant to the integer shift of the window: a rare edge pixel flips.
    print(f"fine polygon crops: {len(fine_agree)}, identical {np.mean(np.equal(fine_agree, 1))}"
          f", pixel agreement worst {np.min(fine_agree):.4f}")
    assert np.mean(np.equal(fine_agree, 1.0)) >= 0.8 and np.min(fine_agree) >= 0.99
    print(f"coarse polygon crops: {len(coarse_agree)}, pixel agreement with crops of the full "
          f"mask: mean {np.mean(coarse_agree):.4f}, worst {np.min(coarse_agree):.4f}")
    assert np.mean(coarse_agree) >= 0.985 and np.min(coarse_agree) >= 0.97


def test_tfrecord_crops_are_crops_of_the_png_masks(shapes):
    a = coco.load_coco(*shapes[:2])
    b = tfrecord.load_tfrecords(shapes[2], shapes[0])
    ds = pipeline.build_dataset(b, INPUT, 2, False, gt_mask_size=CROP)
    assert ds.element_spec["gt_masks"].shape.as_list() == [None, None, CROP, CROP]
    seen = 0
    for batch in ds:
        for i, image_id in enumerate(batch["image_ids"].numpy()):
            index = [r.image_id for r in a.images].index(image_id)
            full = a.load_example(index)  # the PNGs hold these masks
            n = len(full["boxes"])
            got = batch["gt_masks"].numpy()[i]
            assert not got[n:].any()  # padding rows are 0
            np.testing.assert_array_equal(got[:n], _crops_of(full["masks"], full["boxes"]))
            seen += 1
    assert seen == len(a)


@pytest.fixture(scope="module")
def stored(shapes, tmp_path_factory):
    """The shapes set with one annotation's segmentation removed (a box mask), written with
    (``mask_crop_size`` CROP) and without stored crops."""
    root = tmp_path_factory.mktemp("stored")
    d = json.loads(open(shapes[0]).read())
    del d["annotations"][0]["segmentation"]
    ann_file = str(root / "edited.json")
    with open(ann_file, "w") as f:
        json.dump(d, f)
    out = {"annotations": ann_file, "images": shapes[1]}
    for name, size in (("plain", None), ("crops", CROP)):
        out[name] = tfrecord.write_tfrecords(ann_file, shapes[1], str(root / name / "train"), 2,
                                             progress=False, mask_crop_size=size)["files"]
    return out


def _gt_masks(source, mask_size):
    """{image id: its unpadded gt_masks} of an evaluation pass (no flip, no resize of crops)."""
    out = {}
    for batch in pipeline.build_dataset(source, INPUT, 2, False, gt_mask_size=mask_size):
        for i, image_id in enumerate(batch["image_ids"].numpy()):
            n = int((batch["gt_classes"].numpy()[i] > 0).sum())
            h, w = batch["image_sizes"].numpy()[i]
            masks = batch["gt_masks"].numpy()[i, :n]
            out[int(image_id)] = masks if mask_size else masks[:, :h, :w]
    return out


def test_stored_crops_equal_the_coco_crops(stored):
    """Records written with crops give exactly the COCO json path's crops (polygons, RLE, a
    box mask); without them, the PNG path's crops, which differ for coarse polygon crops."""
    a = coco.load_coco(stored["annotations"], stored["images"])
    from_crops = _gt_masks(tfrecord.load_tfrecords(stored["crops"], stored["annotations"]), CROP)
    from_pngs = _gt_masks(tfrecord.load_tfrecords(stored["plain"], stored["annotations"]), CROP)
    assert len(from_crops) == len(from_pngs) == len(a)
    assert any(r.segmentations[:1] == [None] for r in a.images)
    differ = 0
    for index, record in enumerate(a.images):
        want = a.load_example(index, gt_mask_size=CROP)["masks"]
        np.testing.assert_array_equal(from_crops[record.image_id], want)
        differ += int((from_pngs[record.image_id] != want).any())
    assert differ  # the stored crops were read, not the PNGs


def test_stored_crops_leave_the_model_garden_keys_and_other_sizes_alone(stored):
    """The crop features are only added; full masks and another crop size come from the PNGs
    exactly as from records without crops (a size mismatch falls back, it is no error)."""
    for plain, crops in zip(stored["plain"], stored["crops"]):
        for x, y in zip(*(tf.data.TFRecordDataset(p) for p in (plain, crops))):
            x, y = (tf.train.Example.FromString(r.numpy()) for r in (x, y))
            extra = {"image/object/mask_crop", "image/object/mask_crop/size"}
            assert set(y.features.feature) - set(x.features.feature) == extra
            assert y.features.feature["image/object/mask_crop/size"].int64_list.value == [CROP]
            for key in extra:
                del y.features.feature[key]
            assert x.SerializeToString(deterministic=True) == \
                y.SerializeToString(deterministic=True)
    for size in (None, CROP // 2):
        got, want = (_gt_masks(tfrecord.load_tfrecords(stored[k], stored["annotations"]), size)
                     for k in ("crops", "plain"))
        assert got.keys() == want.keys()
        for image_id in want:
            np.testing.assert_array_equal(got[image_id], want[image_id])


def test_a_stored_crop_of_another_shape_skips_the_record(stored, tmp_path):
    record = next(iter(tf.data.TFRecordDataset(stored["crops"][0])))
    example = tf.train.Example.FromString(record.numpy())
    example.features.feature["image/object/mask_crop"].bytes_list.value[0] = \
        tfrecord.encode_mask_png(np.ones((CROP, CROP + 1), np.uint8))
    with tf.io.TFRecordWriter(str(tmp_path / "bad.tfrecord")) as w:
        w.write(example.SerializeToString())
    source = tfrecord.load_tfrecords(str(tmp_path / "bad.tfrecord"), stored["annotations"])
    assert _gt_masks(source, CROP) == {}
    [(name, reason)] = source.stats.skipped_images
    assert reason == f"mask: ValueError: mask 0 is {CROP}x{CROP + 1}, expected {CROP}x{CROP}"


def test_training_crops_follow_resize_and_flip(shapes):
    """Same seed, full vs cropped: equal images and boxes (the mask format takes no random
    draw), and each crop agrees with the crop of the resized, flipped full mask; the RoI
    targets of the GT boxes (of at least 16 px) agree as in tests/ops/test_mask_crops.py.
    Measured: crop pixel agreement mean 0.980, worst 0.922; target IoU mean 0.970, worst
    0.931 (the full masks are resampled by the nearest resize, the crops are not)."""
    source = coco.load_coco(*shapes[:2])
    kw = dict(flip_probability=0.5, seed=5, group_by_aspect_ratio=True)
    full = pipeline.build_dataset(source, INPUT, 2, True, **kw)
    cropped = pipeline.build_dataset(source, INPUT, 2, True, gt_mask_size=CROP, **kw)
    assert cropped.element_spec["gt_masks"].shape.as_list() == [2, None, CROP, CROP]
    agreement, ious, short_sides = [], [], set()
    for a, b in zip(full.take(8), cropped.take(8)):
        a, b = {k: v.numpy() for k, v in a.items()}, {k: v.numpy() for k, v in b.items()}
        for key in ("images", "gt_boxes", "gt_classes", "image_sizes"):
            np.testing.assert_array_equal(a[key], b[key])
        short_sides |= {int(min(s)) for s in a["image_sizes"]}
        for i in range(2):
            n = int((a["gt_classes"][i] > 0).sum())
            want = _crops_of(a["gt_masks"][i, :n], a["gt_boxes"][i, :n])
            agreement += [(g == w).mean() for g, w in zip(b["gt_masks"][i, :n], want)]
        matched = np.tile(np.arange(a["gt_boxes"].shape[1], dtype=np.int32), (2, 1))
        ref = project_masks_on_boxes(a["gt_masks"], a["gt_boxes"], matched, 28).numpy()
        out = project_cropped_masks_on_boxes(b["gt_masks"], b["gt_boxes"], a["gt_boxes"],
                                             matched, 28).numpy()
        sides = a["gt_boxes"][..., 2:] - a["gt_boxes"][..., :2]
        valid = (a["gt_classes"] > 0) & (sides.min(-1) >= 16)
        x, y = ref[valid] >= 0.5, out[valid] >= 0.5
        ious += list((x & y).sum((1, 2)) / np.maximum((x | y).sum((1, 2)), 1))
    assert len(short_sides) >= 2  # scale jitter happened
    print(f"crops vs crops of resized / flipped full masks: pixel agreement mean "
          f"{np.mean(agreement):.4f} worst {np.min(agreement):.4f}; GT-box target IoU mean "
          f"{np.mean(ious):.4f} worst {np.min(ious):.4f}")
    assert np.mean(agreement) >= 0.96 and np.min(agreement) >= 0.88
    assert np.mean(ious) >= 0.96 and np.min(ious) >= 0.88


def test_flip_mirrors_the_crop_exactly(shapes):
    source = coco.load_coco(*shapes[:2])
    runs = [pipeline.build_dataset(source, INPUT, 2, True, flip_probability=p, seed=1,
                                   gt_mask_size=CROP) for p in (0.0, 1.0)]
    a, b = (next(iter(ds)) for ds in runs)
    np.testing.assert_array_equal(b["gt_masks"].numpy(), a["gt_masks"].numpy()[..., ::-1])


def test_synthetic_config_gives_crops_and_one_fit_step(tmp_path):
    cfg = load_config("configs/tiny.yaml", [
        f"data.synthetic.output_dir={tmp_path}", "input.gt_mask_format=cropped",
        "input.gt_mask_size=24", "model.keypoint_head.enabled=false"])
    dataset, _ = pipeline.dataset_from_config(cfg.data, cfg.input, "train", 2, True)
    batch = next(iter(dataset))
    assert batch["gt_masks"].shape[2:] == (24, 24) and batch["gt_masks"].dtype == tf.uint8
    model = builders.build_model(cfg)
    assert model.gt_mask_format == "cropped"
    rebuilt = type(model).from_config(model.get_config())  # the format travels with the recipe
    assert rebuilt.gt_mask_format == "cropped"
    import keras
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=False)
    before = [v.numpy().copy() for v in model.mask_predictor.trainable_variables]
    history = model.fit(dataset.take(1), epochs=1, verbose=0)
    assert np.isfinite(history.history["mask_loss"][-1]) and history.history["mask_loss"][-1] > 0
    after = model.mask_predictor.trainable_variables
    assert all(not np.array_equal(x, y.numpy()) for x, y in zip(before, after))


def test_config_rules_and_defaults():
    assert InputConfig().gt_mask_format == "full"  # torchvision's exact targets by default
    for name in ("maskrcnn_r50_fpn_coco", "maskrcnn_r101_fpn_coco",
                 "maskrcnn_x101_32x8d_fpn_coco"):
        assert load_config(f"configs/{name}.yaml").input.gt_mask_format == "cropped"
    assert load_config("configs/tiny.yaml").input.gt_mask_format == "full"
    with pytest.raises(ConfigError, match="input.gt_mask_format.*Mask R-CNN"):
        load_config("configs/yolact_shapes.yaml", ["input.gt_mask_format=cropped"])
    with pytest.raises(ConfigError, match="input.gt_mask_format.*augment 'ssd'"):
        load_config("configs/tiny.yaml", ["input.gt_mask_format=cropped", "data.augment=ssd"])
    with pytest.raises(ConfigError, match="gt_mask_size"):
        load_config("configs/tiny.yaml", ["input.gt_mask_size=1"])
    with pytest.raises(ConfigError, match="input.gt_mask_format.*sampling_ratio >= 1"):
        load_config("configs/tiny.yaml", ["input.gt_mask_format=cropped",
                                          "model.roi_align.sampling_ratio=0"])
