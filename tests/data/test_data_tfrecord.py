"""keras_maskrcnn.data.tfrecord: Model Garden keys, COCO-path equality, fallbacks, skipping, CLI."""
import io
import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_maskrcnn.config import InputConfig, load_config
from keras_maskrcnn.data import coco, coco_json, pipeline, synthetic, tfrecord, tfrecord_reader
from support.data import write_defective_file

KP = len(synthetic.KEYPOINT_NAMES)
INPUT = InputConfig(min_size_train=(96, 128), min_size_test=128, max_size=160, max_instances=8)
# The keys Model Garden's create_coco_tf_record.py / tfrecord_lib.py write (masks included) and
# the TF Object Detection API's keypoint keys, with their value kinds.
MODEL_GARDEN_KEYS = {
    "image/encoded": "bytes", "image/format": "bytes", "image/source_id": "bytes",
    "image/height": "int64", "image/width": "int64", "image/filename": "bytes",
    "image/key/sha256": "bytes", "image/object/bbox/xmin": "float",
    "image/object/bbox/xmax": "float", "image/object/bbox/ymin": "float",
    "image/object/bbox/ymax": "float", "image/object/class/label": "int64",
    "image/object/class/text": "bytes", "image/object/is_crowd": "int64",
    "image/object/area": "float", "image/object/mask": "bytes"}
OD_API_KEYPOINT_KEYS = {
    "image/object/keypoint/x": "float", "image/object/keypoint/y": "float",
    "image/object/keypoint/visibility": "int64", "image/object/keypoint/num": "int64",
    "image/object/keypoint/text": "bytes"}


def _kind(feature):
    return feature.WhichOneof("kind").replace("_list", "")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 synthetic 128 px images (seed 1: a crowd region and a PNG), edited: image 2 without
    annotations, an annotation without segmentation, one leaving the image, a degenerate one."""
    root = tmp_path_factory.mktemp("tfrecord")
    ann_file, image_dir = synthetic.write_synthetic_dataset(
        root / "shapes", 6, 0, seed=1, image_size=128)["train"]
    d = json.loads(open(ann_file).read())
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] != 2]
    extra = [(3, [10, 10, 20, 15], None), (4, [5, 5, 0.5, 10], [[5, 5, 5.5, 5, 5.5, 15]]),
             (5, [100, 100, 50, 50], [[100, 100, 150, 100, 150, 150, 100, 150]])]
    for image_id, bbox, segm in extra:
        ann = {"id": 1000 + image_id, "image_id": image_id, "category_id": 7, "bbox": bbox,
               "iscrowd": 0, "area": bbox[2] * bbox[3]}
        if segm:
            ann.update(segmentation=segm, keypoints=[110, 100, 2, 128, 120, 1, 120, 128, 0,
                                                      100, 125, 2])
        d["annotations"].append(ann)
    ann_file = str(root / "edited.json")
    with open(ann_file, "w") as f:
        json.dump(d, f)
    stats = tfrecord.write_tfrecords(ann_file, image_dir, str(root / "rec" / "train"), 2, KP,
                                     progress=False)
    return {"root": root, "annotations": ann_file, "images": image_dir, "stats": stats,
            "pattern": str(root / "rec" / "train-*.tfrecord"), "json": d}


def _records(path):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def _write(path, examples):
    with tf.io.TFRecordWriter(str(path)) as w:
        for example in examples:
            w.write(example.SerializeToString())


def _eval_batches(source, **kw):
    ds = pipeline.build_dataset(source, INPUT, 2, False, **kw)
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


def _by_id(batches):
    """{image id: {key: unpadded value}} of evaluation batches."""
    out = {}
    for b in batches:
        for i, image_id in enumerate(b["image_ids"]):
            h, w = b["image_sizes"][i]
            ex = {k: v[i] for k, v in b.items()}
            ex["images"] = ex["images"][:h, :w]
            if "gt_masks" in ex:
                ex["gt_masks"] = ex["gt_masks"][:, :h, :w]
            out[int(image_id)] = ex
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for image_id in a:
        assert a[image_id].keys() == b[image_id].keys()
        for key in a[image_id]:
            np.testing.assert_array_equal(a[image_id][key], b[image_id][key],
                                          err_msg=f"image {image_id} {key}")


# ----------------------------------------------------------------------------- writing
def test_writer_files_keys_and_values_follow_model_garden(data):
    stats = data["stats"]
    assert [p.rsplit("/", 1)[1] for p in stats["files"]] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    shards = [_records(p) for p in stats["files"]]
    assert [len(s) for s in shards] == [3, 3]
    images = {i["id"]: i for i in data["json"]["images"]}
    for shard, examples in enumerate(shards):  # image i (in id order) goes to shard i % 2
        for j, ex in enumerate(examples):
            f = ex.features.feature
            assert {k: _kind(v) for k, v in f.items()} == {**MODEL_GARDEN_KEYS,
                                                           **OD_API_KEYPOINT_KEYS}
            assert set(f) <= set(tfrecord.FEATURE_KEYS)
            image = images[2 * j + shard + 1]
            assert f["image/source_id"].bytes_list.value == [str(image["id"]).encode()]
            assert f["image/filename"].bytes_list.value == [image["file_name"].encode()]
            raw = open(f"{data['images']}/{image['file_name']}", "rb").read()
            assert f["image/encoded"].bytes_list.value == [raw]  # the file, unchanged
            fmt = b"png" if image["file_name"].endswith("png") else b"jpeg"
            assert f["image/format"].bytes_list.value == [fmt]
            m = len(f["image/object/class/label"].int64_list.value)
            for key in ("xmin", "ymin", "xmax", "ymax"):
                values = np.array(f[f"image/object/bbox/{key}"].float_list.value)
                assert len(values) == m and (values >= 0).all() and (values <= 1).all()
            assert set(f["image/object/class/label"].int64_list.value) <= {1, 3, 7}  # dataset ids
            assert len(f["image/object/mask"].bytes_list.value) == m
            assert len(f["image/object/keypoint/x"].float_list.value) == m * KP
            assert len(f["image/object/keypoint/num"].int64_list.value) == m
    assert stats["num_images"] == 6 and stats["num_crowd"] == 1 and stats["num_degenerate"] == 1
    assert stats["num_box_masks"] == 1 and stats["missing_images"] == []


def test_model_garden_decoder_reads_the_records(data):
    """Model Garden's TfExampleDecoder spec (include_mask=True) parses our records."""
    spec = {"image/encoded": tf.io.FixedLenFeature((), tf.string),
            "image/height": tf.io.FixedLenFeature((), tf.int64, -1),
            "image/width": tf.io.FixedLenFeature((), tf.int64, -1),
            "image/source_id": tf.io.FixedLenFeature((), tf.string),
            "image/object/mask": tf.io.VarLenFeature(tf.string),
            "image/object/class/label": tf.io.VarLenFeature(tf.int64),
            "image/object/area": tf.io.VarLenFeature(tf.float32),
            "image/object/is_crowd": tf.io.VarLenFeature(tf.int64)}
    spec.update({f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32)
                 for k in ("xmin", "xmax", "ymin", "ymax")})
    source = coco.load_coco(data["annotations"], data["images"])
    record = next(iter(tf.data.TFRecordDataset(data["stats"]["files"][0])))  # image 1
    parsed = tf.io.parse_single_example(record, spec)
    image = tf.io.decode_image(parsed["image/encoded"], channels=3)
    assert image.shape == (128, 128, 3) and parsed["image/source_id"].numpy() == b"1"
    pngs = tf.sparse.to_dense(parsed["image/object/mask"], default_value="")
    masks = tf.map_fn(lambda p: tf.io.decode_png(p, channels=1)[..., 0], pngs,
                      fn_output_signature=tf.uint8).numpy()
    crowd = tf.sparse.to_dense(parsed["image/object/is_crowd"]).numpy().astype(bool)
    np.testing.assert_array_equal(masks[~crowd], source.instance_masks(source.images[0]))
    crowd_anns = [a for a in data["json"]["annotations"] if a["image_id"] == 1 and a["iscrowd"]]
    assert crowd.sum() == len(crowd_anns) == 1  # written, flagged
    np.testing.assert_array_equal(masks[crowd][0], coco.decode_segmentation(
        crowd_anns[0]["segmentation"], 128, 128))
    boxes = np.stack([tf.sparse.to_dense(parsed[f"image/object/bbox/{k}"]).numpy()
                      for k in ("xmin", "ymin", "xmax", "ymax")], 1) * 128
    np.testing.assert_allclose(boxes[~crowd], source.images[0].boxes, atol=1e-4)


# ----------------------------------------------------------------------------- reading
def test_tfrecord_examples_equal_the_coco_path(data):
    a = coco.load_coco(data["annotations"], data["images"], num_keypoints=KP)
    b = tfrecord.load_tfrecords(data["pattern"], data["annotations"], num_keypoints=KP)
    assert b.categories == a.categories and b.keypoint_names == a.keypoint_names
    assert b.skeleton == a.skeleton
    coco_batches, tfr_batches = _eval_batches(a), _eval_batches(b)
    ids = [i for x in tfr_batches for i in x["image_ids"].tolist()]
    assert ids == [1, 2, 3, 4, 5, 6]  # round-robin over the shards: id order, negative kept
    _assert_same(_by_id(coco_batches), _by_id(tfr_batches))  # images, boxes, masks, kps, ...
    assert _by_id(tfr_batches)[5]["gt_boxes"].max() == 128  # the box leaving the image: clipped
    assert b.stats.num_crowd == a.stats.num_crowd == 1 and not b.stats.skipped_images
    assert b.stats.num_box_masks == 0  # the writer stored the box as a PNG mask
    truncated = [_by_id(_eval_batches(s, max_images=4, with_masks=False)) for s in (a, b)]
    assert sorted(truncated[1]) == [1, 2, 3, 4]
    _assert_same(*truncated)
    scanned = tfrecord.load_tfrecords(data["pattern"], num_keypoints=KP)  # labels seen
    assert scanned.categories == a.categories
    _assert_same(_by_id(coco_batches), _by_id(_eval_batches(scanned)))


def test_mutation_swapped_box_axes_are_caught(data, monkeypatch):
    a = coco.load_coco(data["annotations"], data["images"], num_keypoints=KP)
    monkeypatch.setattr(tfrecord_reader, "BOX_KEYS", tuple(
        f"image/object/bbox/{k}" for k in ("ymin", "xmin", "ymax", "xmax")))
    b = tfrecord.load_tfrecords(data["pattern"], data["annotations"], num_keypoints=KP)
    with pytest.raises(AssertionError, match="gt_boxes"):
        _assert_same(_by_id(_eval_batches(a)), _by_id(_eval_batches(b)))


def test_training_skips_crowd_and_negatives_and_is_deterministic(data):
    source = tfrecord.load_tfrecords(data["pattern"], data["annotations"], num_keypoints=KP)

    def run(seed, skip=0):
        ds = pipeline.build_dataset(source, INPUT, 2, True, flip_pairs=synthetic.FLIP_PAIRS,
                                    seed=seed, shuffle_buffer=4, skip_examples=skip)
        return [{k: v.numpy() for k, v in b.items()} for b in ds.take(4)]

    first, again, other = run(3), run(3), run(4)
    spec = pipeline.build_dataset(source, INPUT, 2, True, flip_pairs=()).element_spec
    assert spec["gt_masks"].shape == (2, 8, 160, 160)
    assert spec["gt_keypoints"].shape == (2, 8, KP, 3)
    for x, y in zip(first, again):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    ids = [i for b in first for i in b["image_ids"].tolist()]
    assert set(ids) == {1, 3, 4, 5, 6} and ids != [i for b in other for i in b["image_ids"]]
    crowd_image = [a["image_id"] for a in data["json"]["annotations"] if a["iscrowd"]][0]
    n_gt = {a: sum(1 for x in data["json"]["annotations"] if x["image_id"] == a
                   and not x["iscrowd"] and x["bbox"][2] >= 1) for a in ids}
    for b in first:
        for i, image_id in enumerate(b["image_ids"]):
            assert (b["gt_classes"][i] > 0).sum() == n_gt[image_id], image_id
    assert crowd_image in ids
    resumed = run(3, skip=4)  # resuming after 2 batches of 2 continues the same stream
    for x, y in zip(first[2:], resumed):
        np.testing.assert_array_equal(x["image_ids"], y["image_ids"])
        np.testing.assert_array_equal(x["images"], y["images"])
    cached = pipeline.build_dataset(source, INPUT, 2, True, flip_pairs=(), cache=True)
    assert {i for b in cached.take(5) for i in b["image_ids"].numpy()} == {1, 3, 4, 5, 6}


def _decoded_ids(source):
    """Records the image id of every record ``source`` decodes."""
    decoded, decode = [], source.decode_record

    def recording(f, *args):
        decoded.append(int(f["image/source_id"]))
        return decode(f, *args)

    source.decode_record = recording
    return decoded


@pytest.mark.parametrize("num_shards", [2, 3])
def test_sharded_pipelines_decode_disjoint_shares(data, num_shards, caplog):
    """2 files, 2 pipelines: one file each (images 1 3 5 | 2 4 6: written round-robin).
    3 pipelines: fewer files than pipelines, a warning, and record k mod 3 of each file."""
    expected = {2: [{1, 3, 5}, {2, 4, 6}], 3: [{1, 2}, {3, 4}, {5, 6}]}[num_shards]
    off = tf.data.experimental.AutoShardPolicy.OFF
    for k in range(num_shards):
        source = tfrecord.load_tfrecords(data["pattern"], data["annotations"], KP)
        decoded = _decoded_ids(source)
        with caplog.at_level(logging.WARNING):
            ds = pipeline.build_dataset(source, INPUT, 1, False, num_shards=num_shards,
                                        shard_index=k)
        assert ("decodes 1 record in 3" in caplog.text) == (num_shards == 3)
        assert ds.options().experimental_distribute.auto_shard_policy == off
        assert {int(b["image_ids"][0]) for b in ds} == expected[k] == set(decoded)
        del decoded[:]
        train = pipeline.build_dataset(source, INPUT, 1, True, flip_pairs=(), seed=k,
                                       num_shards=num_shards, shard_index=k)
        seen = {int(b["image_ids"][0]) for b in train.take(8)}
        assert seen == expected[k] - {2} == set(decoded) - {2}  # 2 has no GT


def test_sharded_first_images_are_shared_record_by_record(data):
    source = tfrecord.load_tfrecords(data["pattern"], data["annotations"], KP)
    shares = [[int(b["image_ids"][0]) for b in pipeline.build_dataset(
        source, INPUT, 1, False, max_images=4, num_shards=2, shard_index=k)] for k in (0, 1)]
    assert shares == [[1, 3], [2, 4]]  # the first 4 of 1 2 3 4 5 6 (round-robin), k mod 2


def _minimal_example(image, boxes, labels, source_id=b"", texts=None):
    """A Model Garden-style record without masks, keypoints, is_crowd nor sizes."""
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, np.float32) / [w, h, w, h]
    f = {"image/encoded": [png.getvalue()], "image/source_id": [source_id],
         "image/object/class/label": list(labels)}
    if texts is not None:
        f["image/object/class/text"] = texts
    f.update({f"image/object/bbox/{k}": boxes[:, i].tolist()
              for i, k in enumerate(("xmin", "ymin", "xmax", "ymax"))})
    feats = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)) if isinstance(v[0], bytes)
             else tf.train.Feature(int64_list=tf.train.Int64List(value=v)) if isinstance(v[0], int)
             else tf.train.Feature(float_list=tf.train.FloatList(value=v)) for k, v in f.items()}
    return tf.train.Example(features=tf.train.Features(feature=feats))


def test_records_without_masks_keypoints_or_ids(tmp_path):
    image = np.full((40, 50, 3), 90, np.uint8)
    _write(tmp_path / "x.tfrecord", [
        _minimal_example(image, [[5, 6, 20.4, 30], [10, 0, 50, 40]], [12, 40], b"abc",
                         [b"cat", b"dog"]),
        _minimal_example(image, [[1, 2, 3, 4]], [40], b"77")])
    source = tfrecord.load_tfrecords(str(tmp_path / "*.tfrecord"), num_keypoints=3)
    assert source.categories == coco.CategoryMap((12, 40), ("cat", "dog"))  # labels seen
    batches = _eval_batches(source)
    ex = _by_id(batches)
    assert 77 in ex and len(ex) == 2
    hashed = [i for i in ex if i != 77][0]
    assert hashed == tfrecord._image_id("abc", b"") and 0 <= hashed < 2 ** 63
    scale = 128 / 40  # min_size_test 128, the 50 px side becomes 160 (max_size)
    first = ex[hashed]
    np.testing.assert_array_equal(first["gt_classes"], [1, 2])  # rows: the batch's largest
    np.testing.assert_array_equal(ex[77]["gt_classes"], [2, -1])  # count, padded with -1
    np.testing.assert_allclose(first["gt_boxes"][0], np.array([5, 6, 20.4, 30]) * scale,
                               rtol=1e-5)
    box_mask = first["gt_masks"][0].astype(bool)  # the (rounded) box, resized
    ys, xs = np.nonzero(box_mask)
    assert abs(xs.min() - 5 * scale) <= 2 and abs(ys.max() + 1 - 30 * scale) <= 2
    assert (first["gt_keypoints"][:2] == 0).all()  # no keypoints: v = 0
    assert source.stats.num_box_masks == 3
    with pytest.raises(FileNotFoundError, match="no TFRecord file"):
        tfrecord.load_tfrecords(str(tmp_path / "none-*.tfrecord"))


def test_record_orientation_from_the_sizes_or_the_image_header(data):
    """The window key of a record before decoding: image/height, image/width when written
    (this writer, Model Garden's), else the image file's header."""
    records = [e for p in data["stats"]["files"] for e in _records(p)]
    keys = [int(tfrecord.record_orientation(r.SerializeToString())) for r in records]
    assert keys == [0] * 6  # square
    boxes = [[1, 1, 10, 10]]
    for (h, w), key in (((40, 50), 0), ((60, 30), 1), ((30, 30), 0)):
        example = _minimal_example(np.zeros((h, w, 3), np.uint8), boxes, [1])  # no sizes
        assert int(tfrecord.record_orientation(example.SerializeToString())) == key, (h, w)
        f = example.features.feature  # sizes win over the header (the decoding checks them)
        f["image/height"].int64_list.value.append(w + 1)
        f["image/width"].int64_list.value.append(w)
        assert int(tfrecord.record_orientation(example.SerializeToString())) == 1


def test_grouped_training_on_records_without_sizes(tmp_path):
    sizes = [(40, 50), (60, 30), (30, 45), (50, 20), (20, 30)]
    _write(tmp_path / "x.tfrecord", [_minimal_example(np.full((h, w, 3), 50, np.uint8),
                                                      [[2, 2, 15, 15]], [3], str(i).encode())
                                     for i, (h, w) in enumerate(sizes)])
    source = tfrecord.load_tfrecords(str(tmp_path / "x.tfrecord"))

    def batches(skip, count):
        ds = pipeline.build_dataset(source, INPUT, 2, True, seed=1, group_by_aspect_ratio=True,
                                    skip_examples=2 * skip)
        return [b["image_ids"].numpy().tolist() for b in ds.take(count)]

    full = batches(0, 10)
    kinds = [{sizes[i][0] > sizes[i][1] for i in ids} for ids in full]
    assert {False} in kinds and {True} in kinds and all(len(k) == 1 for k in kinds)
    for k in range(1, 7):  # exact only if the windows were formed with the header's sizes
        assert batches(k, 3) == full[k:k + 3], k


def test_corrupt_images_are_skipped_and_counted(data, tmp_path, caplog, monkeypatch):
    examples = [e for p in data["stats"]["files"] for e in _records(p)]  # ids 1 3 5 2 4 6
    bad = {}
    for ex in examples:
        f = ex.features.feature
        image_id = int(f["image/source_id"].bytes_list.value[0])
        if image_id in (3, 4):  # a truncated JPEG, garbage
            encoded = f["image/encoded"].bytes_list.value[0]
            f["image/encoded"].bytes_list.value[0] = encoded[:200] if image_id == 3 else b"??"
        if image_id == 6:  # a corrupt mask PNG
            f["image/object/mask"].bytes_list.value[0] = b"not a png"
        if image_id in (3, 4, 6):
            bad[image_id] = f["image/filename"].bytes_list.value[0].decode()
    _write(tmp_path / "c-00000-of-00001.tfrecord", examples)
    source = tfrecord.load_tfrecords(str(tmp_path / "c-*"), data["annotations"], KP)
    with caplog.at_level(logging.WARNING):
        ids = [i for b in _eval_batches(source) for i in b["image_ids"].tolist()]
    assert ids == [1, 5, 2]
    assert source.stats.num_skipped == 3
    assert {name for name, _ in source.stats.skipped_images} == set(bad.values())
    assert all(name in caplog.text for name in bad.values())
    train = pipeline.build_dataset(source, INPUT, 2, True, flip_pairs=())
    seen = {i for b in train.take(8) for i in b["image_ids"].numpy()}
    assert seen == {1, 5} and source.stats.num_skipped == 3  # counted once, goes on
    no_masks = pipeline.build_dataset(source, INPUT, 2, False, with_masks=False)
    assert [i for b in no_masks for i in b["image_ids"].numpy()] == [1, 5, 2, 6]  # PNG unread
    _write(tmp_path / "all-bad.tfrecord", examples[1:2])  # only image 3 (corrupt)
    hopeless = tfrecord.load_tfrecords(str(tmp_path / "all-bad.tfrecord"), data["annotations"])
    monkeypatch.setattr(tfrecord_reader, "_MAX_FAILURES_IN_A_ROW", 50)
    with pytest.raises(Exception, match="records in a row are unreadable"):
        next(iter(pipeline.build_dataset(hopeless, INPUT, 1, True)))
    wrong_kp = tfrecord.load_tfrecords(data["pattern"], data["annotations"], num_keypoints=3)
    with pytest.raises(Exception, match="keypoint values for .* objects, expected"):
        _eval_batches(wrong_kp)  # a schema mismatch is an error, not a skipped record


def test_cli_and_config(data, tmp_path, capsys):
    prefix = tmp_path / "out" / "val"
    code = tfrecord.main(["--annotations", data["annotations"], "--images", data["images"],
                          "--output", str(prefix), "--shards", "3", "--no-progress"])
    assert code == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [f"val-0000{i}-of-00003.tfrecord" for i in range(3)]
    out = capsys.readouterr().out
    assert "wrote 6 images" in out and "format: tfrecord" in out
    assert "image/object/keypoint/x" not in _records(str(prefix) + "-00000-of-00003.tfrecord")[
        0].features.feature  # --keypoints 0
    with pytest.raises(SystemExit):
        tfrecord.main(["--annotations", str(tmp_path / "missing.json"), "--images", "x",
                       "--output", str(prefix)])
    cfg = load_config("configs/shapes.yaml", [
        "data.val.format=tfrecord", f"data.val.tfrecords={prefix}-*.tfrecord",
        f"data.val.annotations={data['annotations']}", "model.keypoint_head.enabled=false"])
    ds, source = pipeline.dataset_from_config(cfg.data, cfg.input, "val", 4, False)
    assert isinstance(source, tfrecord.TFRecordSource) and source.categories.num_classes == 4
    assert [i for b in ds for i in b["image_ids"].numpy().tolist()] == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- bad annotations
def _examples(paths):
    return [[tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(p)]
            for p in paths]


def test_writer_leaves_out_bad_annotations_and_prints_the_summary_first(tmp_path, capsys):
    files = write_defective_file(tmp_path)
    bad = tfrecord.write_tfrecords(files["bad"], files["images"], str(tmp_path / "bad" / "r"),
                                   2, KP, progress=False)
    out = capsys.readouterr().out
    assert out.startswith(f"{files['bad']}: 28 annotations, 13 left out")
    assert bad["report"].dropped == {reason: [i] for reason, i in files["ids"].items()}
    clean = tfrecord.write_tfrecords(files["clean"], files["images"],
                                     str(tmp_path / "clean" / "r"), 2, KP, progress=False)
    assert capsys.readouterr().out.startswith(f"{files['clean']}: 15 annotations, none left")
    written = _examples(bad["files"])
    assert written == _examples(clean["files"])  # exactly the good annotations
    labels = [len(ex.features.feature["image/object/class/label"].int64_list.value)
              for shard in written for ex in shard]
    assert sum(labels) == bad["num_objects"] == len(files["good"]) == 15
    assert sum(len(shard) for shard in written) == bad["num_images"] == 10


def test_cli_lenient_prints_the_summary_and_strict_exits_with_the_message(tmp_path, capsys):
    files = write_defective_file(tmp_path)
    args = ["--annotations", files["bad"], "--images", files["images"], "--shards", "2",
            "--keypoints", str(KP), "--no-progress"]
    assert tfrecord.main(args + ["--output", str(tmp_path / "lenient" / "r")]) == 0
    out = capsys.readouterr().out
    summary = coco.load_coco(files["bad"], files["images"], KP).report.summary()
    assert out.startswith(summary + "\n") and f"{coco_json.UNKNOWN_CATEGORY}: 1" in out
    assert "wrote 10 images, 15 objects" in out
    assert "13 annotations with a defect (listed above)" in out
    with pytest.raises(SystemExit) as exit_:
        tfrecord.main(args + ["--output", str(tmp_path / "strict" / "r"), "--strict"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {files['bad']}: annotation 1000: bbox: width -3 must be > 0" in err
    assert not (tmp_path / "strict").exists()  # nothing written
    source = tfrecord.load_tfrecords(str(tmp_path / "lenient" / "r-*"), files["bad"], KP)
    assert source.report is None  # the records hold only the good annotations
    assert sum(len(b["image_ids"]) for b in _eval_batches(source)) == 10


def test_cli_mask_crop_size_keeps_the_report_and_writes_the_crops(tmp_path, capsys):
    files = write_defective_file(tmp_path)
    args = ["--annotations", files["bad"], "--images", files["images"], "--shards", "2",
            "--keypoints", str(KP), "--no-progress"]
    assert tfrecord.main(args + ["--output", str(tmp_path / "plain" / "r")]) == 0
    plain = capsys.readouterr().out
    assert tfrecord.main(args + ["--output", str(tmp_path / "crops" / "r"),
                                 "--mask-crop-size", "28"]) == 0
    assert capsys.readouterr().out == plain.replace("plain", "crops")  # the same summary
    written = [ex.features.feature for shard in _examples(
        tfrecord.shard_paths(str(tmp_path / "crops" / "r"), 2)) for ex in shard]
    assert sum(len(f["image/object/mask_crop"].bytes_list.value) for f in written) == 15
    assert {tuple(f["image/object/mask_crop/size"].int64_list.value) for f in written} == {(28,)}
    with pytest.raises(SystemExit):
        tfrecord.main(args + ["--output", str(tmp_path / "strict" / "r"), "--strict",
                              "--mask-crop-size", "28"])
    assert "annotation 1000: bbox: width -3 must be > 0" in capsys.readouterr().err
