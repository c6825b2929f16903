"""keras_maskrcnn.data.pipeline: batch keys, shapes, padding, consistency, skipping, order."""
import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_maskrcnn.config import InputConfig, load_config
from keras_maskrcnn import preprocessing
from keras_maskrcnn.data import coco, pipeline, transforms

INPUT = InputConfig(min_size_train=(48, 64), min_size_test=64, max_size=96, max_instances=4)
PAD = 96  # max_size rounded up to size_divisor 32
# (id, file, height, width, rectangles (x1, y1, x2, y2) with their category ids)
IMAGES = [(1, "a.png", 60, 80, [((5, 6, 30, 40), 9), ((40, 10, 75, 30), 4)]),
          (2, "b.png", 90, 50, [((10, 20, 40, 80), 4)]),
          (3, "c.png", 64, 64, []),  # no annotations: a negative image
          (4, "d.jpg", 70, 100, [((2, 2, 20, 20), 9), ((30, 5, 58, 60), 9), ((60, 40, 98, 68), 4)]),
          (5, "e.jpg", 50, 50, [((5, 5, 20, 20), 4)]),  # truncated file: skipped
          (6, "f.png", 80, 60, [((0, 0, 60, 80), 4)])]
COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]
BACKGROUND = (128, 128, 128)


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    """A hand-made COCO dataset with 2 keypoints per object: (left middle, right middle)."""
    root = tmp_path_factory.mktemp("pipeline")
    images, annotations = [], []
    for image_id, name, h, w, rects in IMAGES:
        pixels = np.full((h, w, 3), BACKGROUND, np.uint8)
        for i, ((x1, y1, x2, y2), cat) in enumerate(rects):
            pixels[y1:y2, x1:x2] = COLOURS[i]
            ym = (y1 + y2) / 2
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0, "area": (x2 - x1) * (y2 - y1),
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
                "keypoints": [x1, ym, 2, x2, ym, 2], "num_keypoints": 2})
        Image.fromarray(pixels).save(root / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    data = root / "e.jpg"
    data.write_bytes(data.read_bytes()[:300])
    categories = [{"id": 9, "name": "nine", "keypoints": ["left", "right"]},
                  {"id": 4, "name": "four"}]
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": categories}))
    return str(ann_file), str(root)


def _source(files, num_keypoints=2):
    return coco.load_coco(*files, num_keypoints=num_keypoints)


def _mask_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _check_batch(batch, num_kp=2):
    """Padding values and image / box / mask / keypoint consistency of one batch."""
    b = {k: v.numpy() for k, v in batch.items()}
    for i in range(len(b["image_ids"])):
        h, w = b["image_sizes"][i]
        oh, ow = b["original_sizes"][i]
        s = float(b["scales"][i])  # float32: floor(side * scale) up to rounding
        assert oh * s - 1 < h <= oh * s + 1e-3 and ow * s - 1 < w <= ow * s + 1e-3
        assert not b["images"][i, h:].any() and not b["images"][i, :, w:].any()
        n = int((b["gt_classes"][i] > 0).sum())
        assert (b["gt_classes"][i, n:] == -1).all() and (b["gt_boxes"][i, n:] == -1).all()
        assert not b["gt_masks"][i, n:].any()
        assert not b["gt_masks"][i, :, h:].any() and not b["gt_masks"][i, :, :, w:].any()
        if num_kp:
            assert (b["gt_keypoints"][i, n:] == -1).all()
        for j in range(n):
            box, mask = b["gt_boxes"][i, j], b["gt_masks"][i, j]
            np.testing.assert_allclose(_mask_box(mask), box, atol=1.0)
            colour = b["images"][i][mask.astype(bool)].mean(axis=0)
            assert np.abs(colour - COLOURS[j]).max() < 25, (colour, j)
            if num_kp:  # keypoint 0 is the left side, 1 the right side, flipped or not
                kp = b["gt_keypoints"][i, j]
                np.testing.assert_allclose(kp[:, 0], box[[0, 2]], atol=1e-3)
                np.testing.assert_allclose(kp[:, 1], (box[1] + box[3]) / 2, atol=1e-3)
    return b


def test_training_batches(source_files, caplog):
    source = _source(source_files)
    with caplog.at_level(logging.WARNING):
        ds = pipeline.build_dataset(source, INPUT, 2, True, flip_pairs=((0, 1),), seed=3)
        spec = ds.element_spec
        assert spec["images"].shape == (2, PAD, PAD, 3) and spec["images"].dtype == tf.float32
        assert spec["gt_masks"].shape == (2, 4, PAD, PAD) and spec["gt_masks"].dtype == tf.uint8
        assert spec["gt_boxes"].shape == (2, 4, 4) and spec["gt_classes"].dtype == tf.int32
        assert spec["gt_keypoints"].shape == (2, 4, 2, 3)
        assert spec["image_ids"].dtype == tf.int64 and spec["scales"].shape == (2,)
        assert spec["image_sizes"].dtype == spec["original_sizes"].dtype == tf.int32
        assert all(s.shape.is_fully_defined() for s in spec.values())
        ids, short_sides = set(), set()
        for batch in ds.take(12):
            b = _check_batch(batch)
            ids |= set(b["image_ids"].tolist())
            for (h, w), (oh, ow) in zip(b["image_sizes"], b["original_sizes"]):
                short_sides.add(min(h, w) if max(h, w) < 96 else "capped")
    assert ids == {1, 2, 4, 6}  # no negative (3) nor unreadable (5) image
    assert {48, 64} <= short_sides
    assert source.stats.num_skipped == 1 and "e.jpg" in source.stats.skipped_images[0][0]
    assert caplog.text.count("e.jpg") == 1  # named once, though the split repeats


def test_training_flip_and_class_mapping(source_files):
    source = _source(source_files)
    ds = pipeline.build_dataset(source, INPUT, 4, True, flip_probability=1.0,
                                flip_pairs=((0, 1),), shuffle_buffer=0, seed=0)
    b = _check_batch(next(iter(ds)))
    assert b["image_ids"].tolist() == [1, 2, 4, 6]  # shuffle_buffer 0: file order
    np.testing.assert_array_equal(b["gt_classes"][0], [2, 1, -1, -1])  # 9 -> 2, 4 -> 1
    original = np.asarray(Image.open(source.images[0].path).convert("RGB"))
    h, w = b["image_sizes"][0]
    expected = transforms.flip_image(preprocessing.resize_image(original, (h, w))).numpy()
    np.testing.assert_allclose(b["images"][0, :h, :w], expected, atol=1e-3)
    # Mutation: without the left/right swap keypoint 0 would sit on the right edge.
    bad = pipeline.build_dataset(source, INPUT, 4, True, flip_probability=1.0, flip_pairs=(),
                                 shuffle_buffer=0)
    with pytest.raises(AssertionError):
        _check_batch(next(iter(bad)))


def test_eval_batches_are_ordered_unflipped_and_padded_per_batch(source_files):
    source = _source(source_files)
    ds = pipeline.build_dataset(source, INPUT, 2, False)
    batches = [{k: v.numpy() for k, v in b.items()} for b in ds]
    ids = [i for b in batches for i in b["image_ids"].tolist()]
    assert ids == [1, 2, 3, 4, 6]  # by id, negative kept, unreadable skipped
    for b in batches:
        _check_batch({k: tf.constant(v) for k, v in b.items()})
        hp, wp = b["images"].shape[1:3]
        assert hp % 32 == 0 and wp % 32 == 0
        assert hp - 32 < b["image_sizes"][:, 0].max() <= hp
        assert wp - 32 < b["image_sizes"][:, 1].max() <= wp
        assert b["gt_masks"].shape[2:] == (hp, wp)
    assert [len(b["image_ids"]) for b in batches] == [2, 2, 1]
    first = batches[0]
    np.testing.assert_array_equal(first["image_sizes"], [[64, 85], [96, 53]])  # 96 caps 115
    original = np.asarray(Image.open(source.images[0].path).convert("RGB"))
    np.testing.assert_allclose(first["images"][0, :64, :85],
                               preprocessing.resize_image(original, (64, 85)).numpy(), atol=1e-3)
    negative = batches[1]["gt_classes"][0]
    assert batches[1]["image_ids"][0] == 3 and (negative == -1).all()
    assert batches[1]["images"][0].any()  # the negative image itself is there


def test_determinism_and_filtering(source_files):
    def first(seed, **kw):
        ds = pipeline.build_dataset(_source(source_files), INPUT, 2, True, seed=seed,
                                    flip_pairs=((0, 1),), **kw)
        return [{k: v.numpy() for k, v in b.items()} for b in ds.take(3)]

    a, b, c = first(5), first(5), first(6)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["images"], y["images"]) for x, y in zip(a, c))
    ids = {i for batch in first(0, filter_empty_images=False, shuffle_buffer=0)
           for i in batch["image_ids"]}
    assert 3 in ids


def test_cached_training_dataset(source_files):
    source = _source(source_files)
    ds = pipeline.build_dataset(source, INPUT, 2, True, flip_pairs=((0, 1),), cache=True,
                                shuffle_buffer=3)
    ids = set()
    for batch in ds.take(6):
        ids |= set(_check_batch(batch)["image_ids"].tolist())
    assert ids == {1, 2, 4, 6} and source.stats.num_skipped == 1


def _decoded_ids(source):
    """Records the image id of every image ``source`` is asked to decode (Python stage)."""
    decoded, load = [], source.load_example

    def recording(index, *args):
        decoded.append(source.images[index].image_id)
        return load(index, *args)

    source.load_example = recording
    return decoded


def test_sharded_pipelines_decode_disjoint_index_shares(source_files):
    """num_shards: pipeline k keeps the image indices k, k + N, ... before anything is read;
    the shares are disjoint, their union is the split, each shuffles and resumes on its own."""
    off = tf.data.experimental.AutoShardPolicy.OFF
    shares = []
    for k in range(2):
        evaluation = pipeline.build_dataset(_source(source_files), INPUT, 2, False,
                                            num_shards=2, shard_index=k)
        shares.append({i for b in evaluation for i in b["image_ids"].numpy().tolist()})
        assert evaluation.options().experimental_distribute.auto_shard_policy == off
    assert shares == [{1, 3}, {2, 4, 6}]  # indices 0 2 4 | 1 3 5; 5 is unreadable
    decoded = []
    for k in range(2):
        source = _source(source_files)
        decoded.append(_decoded_ids(source))
        train = pipeline.build_dataset(source, INPUT, 1, True, flip_pairs=((0, 1),),
                                       num_shards=2, shard_index=k)
        seen = {int(b["image_ids"][0]) for b in train.take(12)}
        assert seen == [{1, 4, 6}, {2}][k]  # images with GT: 1 2 4 5 6 -> 1 4 6 | 2 5
        assert set(decoded[k]) == [{1, 4, 6}, {2, 5}][k]
    unsharded = pipeline.build_dataset(_source(source_files), INPUT, 1, False)
    assert unsharded.options().experimental_distribute.auto_shard_policy != off
    with pytest.raises(ValueError, match="share 5 of 6"):  # more shares than images
        pipeline.build_dataset(_source(source_files), INPUT, 1, True, flip_pairs=(),
                               num_shards=6, shard_index=5)


def test_sharded_grouped_stream_resumes_exactly(source_files):
    def batches(skip, count):
        ds = _grouped(source_files, skip_examples=2 * skip, num_shards=2, shard_index=0)
        return [b["image_ids"].numpy().tolist() for b in ds.take(count)]

    full = batches(0, 8)  # 1 and 4 landscape, 6 portrait
    assert {i for b in full for i in b} == {1, 4, 6} and [6, 6] in full
    for k in range(1, 5):
        assert batches(k, 4) == full[k:k + 4]


def test_optional_outputs_and_argument_errors(source_files):
    source = _source(source_files, num_keypoints=0)
    ds = pipeline.build_dataset(source, INPUT, 2, False, with_masks=False, max_images=3)
    keys = set(ds.element_spec)
    assert keys == {"images", "image_sizes", "gt_boxes", "gt_classes", "image_ids",
                    "original_sizes", "scales"}
    assert sum(len(b["image_ids"]) for b in ds) == 3
    with pytest.raises(ValueError, match="flip_pairs"):
        pipeline.build_dataset(_source(source_files), INPUT, 2, True)
    assert pipeline.flip_indices_from_pairs(((1, 3),), 4) == (0, 3, 2, 1)


def test_all_images_unreadable_raises(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    (tmp_path / "x.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "a.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.jpg", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 1, "name": "one"}]}))
    source = coco.load_coco(str(tmp_path / "a.json"), str(tmp_path))
    ds = pipeline.build_dataset(source, INPUT, 1, True)
    with pytest.raises(Exception, match="no image of the split is readable"):
        next(iter(ds))


def test_dataset_from_shapes_config(tmp_path):
    cfg = load_config("configs/shapes.yaml", [
        f"data.synthetic.output_dir={tmp_path}", "data.synthetic.num_train=6",
        "data.synthetic.num_val=3", "data.synthetic.image_size=128"])
    kp = cfg.model.keypoint_head
    train, source = pipeline.dataset_from_config(cfg.data, cfg.input, "train", 2, True, kp)
    assert source.categories.num_classes == cfg.model.num_classes
    assert source.keypoint_names == kp.keypoint_names
    batch = next(iter(train))
    side = -(-cfg.input.max_size // cfg.input.size_divisor) * cfg.input.size_divisor
    assert cfg.data.group_by_aspect_ratio  # the default; min = max = 160: one square size
    assert batch["images"].shape == (2, side, side, 3)  # training pads to max_size, rounded up
    # grouped batches pad the GT rows to the batch's largest instance count
    counts = (batch["gt_classes"].numpy() > 0).sum(axis=1)
    assert batch["gt_keypoints"].shape == (2, max(counts.max(), 1), 4, 3)
    assert batch["gt_masks"].shape == (2, max(counts.max(), 1), side, side)
    assert counts.max() < cfg.input.max_instances
    val, _ = pipeline.dataset_from_config(cfg.data, cfg.input, "val", 2, False, kp)
    sizes = np.concatenate([b["image_sizes"].numpy() for b in val])
    test_side = min(cfg.input.min_size_test, cfg.input.max_size)  # square 128 px images
    np.testing.assert_array_equal(sizes, [[test_side, test_side]] * 3)


# ---- aspect-ratio grouping ---------------------------------------------------------------

LANDSCAPE, PORTRAIT = (64, 96), (96, 64)  # INPUT: max(min_size_train) 64, max_size 96


def test_training_padded_sizes_hand_computed_and_every_resize_fits():
    assert pipeline.training_padded_sizes(INPUT) == (LANDSCAPE, PORTRAIT)
    coco_cfg = InputConfig(min_size_train=(800,), max_size=1333)
    assert pipeline.training_padded_sizes(coco_cfg) == ((800, 1344), (1344, 800))
    small = InputConfig(min_size_train=(480, 512), min_size_test=512, max_size=853)
    assert pipeline.training_padded_sizes(small) == ((512, 864), (864, 512))
    ranged = InputConfig(min_size_train=(500, 700), min_size_train_sampling="range",
                         min_size_test=600, max_size=1000, size_divisor=64)
    assert pipeline.training_padded_sizes(ranged) == ((704, 1024), (1024, 704))
    # Any original size and any sampled min size fits its orientation's padded size.
    rng = np.random.default_rng(0)
    hw = rng.integers(1, 3000, size=(2, 2000))
    for cfg in (coco_cfg, small, ranged, INPUT):
        mins = rng.integers(min(cfg.min_size_train), max(cfg.min_size_train) + 1, 2000)
        h, w, _ = preprocessing.shorter_side_size(hw[0], hw[1], mins, cfg.max_size)
        h, w = h.numpy(), w.numpy()
        (lh, lw), (ph, pw) = pipeline.training_padded_sizes(cfg)
        portrait = h > w
        assert ((h <= np.where(portrait, ph, lh)) & (w <= np.where(portrait, pw, lw))).all()
        # Mutation: ignoring the orientation (everything landscape) would not fit portraits.
        assert portrait.any() and not (h[portrait] <= lh).all()


def _grouped(source_files, seed=3, batch_size=2, **kw):
    return pipeline.build_dataset(_source(source_files), INPUT, batch_size, True,
                                  flip_pairs=((0, 1),), seed=seed, group_by_aspect_ratio=True,
                                  **kw)


def _simulate_grouping(stream, batch_size):
    """Oracle of group_by_window: ungrouped examples -> [ids per batch], in emission order."""
    windows, batches = {0: [], 1: []}, []
    for image_id, (h, w) in stream:
        window = windows[int(h > w)]
        window.append(image_id)
        if len(window) == batch_size:
            batches.append(list(window))
            window.clear()
    return batches


def test_grouped_batches_one_orientation_and_its_size(source_files):
    ds = _grouped(source_files)
    spec = ds.element_spec
    assert spec["images"].shape.as_list() == [2, None, None, 3]
    assert spec["gt_masks"].shape.as_list() == [2, None, None, None]
    assert spec["gt_boxes"].shape.as_list() == [2, None, 4]
    assert spec["gt_keypoints"].shape.as_list() == [2, None, 2, 3]
    shapes, portrait_heights = set(), []
    for batch in ds.take(8):
        b = _check_batch(batch)
        # GT rows padded to the batch's largest instance count (INPUT.max_instances caps it)
        rows = max(int((b["gt_classes"] > 0).sum(axis=1).max()), 1)
        assert b["gt_masks"].shape[1] == b["gt_boxes"].shape[1] == rows <= INPUT.max_instances
        portrait = b["image_sizes"][:, 0] > b["image_sizes"][:, 1]
        assert portrait.all() or not portrait.any()  # one orientation per batch
        bound = PORTRAIT if portrait[0] else LANDSCAPE
        # padded to the batch's largest image rounded up to the size divisor (torchvision's)
        expected = tuple(int(-(-v // INPUT.size_divisor) * INPUT.size_divisor)
                         for v in b["image_sizes"].max(axis=0))
        assert b["images"].shape[1:3] == expected and b["gt_masks"].shape[2:] == expected
        assert (np.array(expected) <= bound).all()
        shapes.add(bound)
        if portrait[0]:
            portrait_heights += b["image_sizes"][:, 0].tolist()
    assert shapes == {LANDSCAPE, PORTRAIT}
    # Mutation: some portrait images would not fit the landscape size (e.g. 96 x 53 > 64 high),
    # so padding by a size that ignored the orientation would fail the shape checks above.
    assert max(portrait_heights) > LANDSCAPE[0]


def test_grouping_matches_the_ungrouped_stream(source_files):
    """Same examples as without grouping (same seed: same order, sizes, flips, pixels),
    regrouped by orientation exactly as the oracle does; nothing dropped."""
    n = 16  # 4 epochs of the 4 training images
    flat = pipeline.build_dataset(_source(source_files), INPUT, 1, True, flip_pairs=((0, 1),),
                                  seed=3)
    flat = [{k: v.numpy()[0] for k, v in b.items()} for b in flat.take(n)]
    expected = _simulate_grouping([(e["image_ids"], e["image_sizes"]) for e in flat], 2)
    batches = [{k: v.numpy() for k, v in b.items()} for b in _grouped(source_files).take(
        len(expected))]
    assert [b["image_ids"].tolist() for b in batches] == expected
    assert sum(len(b) for b in expected) >= n - 2  # at most one example waits per window
    assert {i for b in expected for i in b} == {1, 2, 4, 6}
    queues = {0: [], 1: []}  # per orientation, the grouped examples equal the stream's, in order
    for e in flat:
        queues[int(e["image_sizes"][0] > e["image_sizes"][1])].append(e)
    for b in batches:
        key = int(b["image_sizes"][0, 0] > b["image_sizes"][0, 1])
        for i in range(2):
            e = queues[key].pop(0)
            h, w = e["image_sizes"]
            np.testing.assert_array_equal(b["image_sizes"][i], e["image_sizes"])
            np.testing.assert_array_equal(b["images"][i, :h, :w], e["images"][:h, :w])
            rows = b["gt_classes"].shape[1]  # the batch's GT rows; the flat stream has M
            assert (e["gt_classes"][rows:] == -1).all() and not e["gt_masks"][rows:].any()
            np.testing.assert_array_equal(b["gt_masks"][i, :, :h, :w],
                                          e["gt_masks"][:rows, :h, :w])
            for k in ("gt_boxes", "gt_classes", "gt_keypoints"):
                np.testing.assert_array_equal(b[k][i], e[k][:rows])
            for k in ("scales", "original_sizes"):
                np.testing.assert_array_equal(b[k][i], e[k])


@pytest.mark.parametrize("cache", [False, True])
def test_grouped_stream_resumes_exactly_at_any_step(source_files, cache):
    """Rebuilt with skip_examples = k batches, the grouped stream is the uninterrupted one's
    from batch k on (every array: ids, sizes, flips, pixels), whatever waited in a window."""
    def batches(skip, count):
        ds = _grouped(source_files, max_images=3, skip_examples=2 * skip, cache=cache)
        return [{k: v.numpy() for k, v in b.items()} for b in ds.take(count)]

    full = batches(0, 10)  # images 1 (landscape), 2 (portrait), 4 (landscape)
    assert {bool(h > w) for b in full for h, w in b["image_sizes"]} == {False, True}
    for k in range(1, 7):
        for resumed, expected in zip(batches(k, 4), full[k:]):
            assert resumed.keys() == expected.keys()
            for key in expected:
                np.testing.assert_array_equal(resumed[key], expected[key], err_msg=f"{k} {key}")
    with pytest.raises(ValueError, match="whole batches"):
        _grouped(source_files, skip_examples=3)


def test_grouping_is_deterministic_and_off_or_fixed_keeps_one_size(source_files):
    def ids(seed):
        return [b["image_ids"].numpy().tolist() for b in _grouped(source_files, seed).take(6)]

    first = ids(5)
    assert first == ids(5) and first != ids(6)
    off = pipeline.build_dataset(_source(source_files), INPUT, 2, True, flip_pairs=((0, 1),),
                                 group_by_aspect_ratio=False)
    assert off.element_spec["images"].shape == (2, PAD, PAD, 3)
    # Grouping off mixes orientations in a batch (so the grouped test above is not vacuous).
    assert any(len({bool(h > w) for h, w in b["image_sizes"].numpy()}) == 2
               for b in off.take(6))
    fixed = _grouped(source_files, fixed_size=(128, 96))
    assert fixed.element_spec["images"].shape == (2, 128, 96, 3)
    assert fixed.element_spec["gt_masks"].shape == (2, 4, 128, 96)
    _check_batch(next(iter(fixed)))
    evaluation = pipeline.build_dataset(_source(source_files), INPUT, 2, False,
                                        group_by_aspect_ratio=True)
    assert [b["image_ids"].numpy().tolist() for b in evaluation] == [[1, 2], [3, 4], [6]]


def test_dataset_from_config_passes_grouping(tmp_path):
    overrides = [f"data.synthetic.output_dir={tmp_path}", "data.synthetic.num_train=4",
                 "data.synthetic.num_val=1", "data.synthetic.image_size=128",
                 "input.min_size_train=[96]", "model.keypoint_head.enabled=false"]
    # square 128 px images resized to 96: grouped pads to the batch (96), else max_size square
    for flag, shape in (("true", (96, 96)), ("false", (160, 160))):
        cfg = load_config("configs/shapes.yaml", overrides + [f"data.group_by_aspect_ratio={flag}"])
        train, _ = pipeline.dataset_from_config(cfg.data, cfg.input, "train", 2, True)
        assert next(iter(train))["images"].shape == (2,) + shape + (3,)


# ---- YOLACT: fixed square resize, SSD augmentation ------------------------------------------

SQUARE = InputConfig(resize="fixed_square", size=72, size_divisor=1, max_instances=4)


def test_fixed_square_training_and_eval_batches(source_files):
    source = _source(source_files)
    train = pipeline.build_dataset(source, SQUARE, 2, True, flip_pairs=((0, 1),), seed=3,
                                   group_by_aspect_ratio=True)  # a square needs no grouping
    assert train.element_spec["images"].shape == (2, 72, 72, 3)
    for batch in train.take(4):
        b = {k: v.numpy() for k, v in batch.items()}
        np.testing.assert_array_equal(b["image_sizes"], [[72, 72]] * 2)
        for i in range(2):
            n = int((b["gt_classes"][i] > 0).sum())
            oh, ow = b["original_sizes"][i]
            for j in range(n):  # boxes scaled per axis: the masks follow
                np.testing.assert_allclose(_mask_box(b["gt_masks"][i, j]), b["gt_boxes"][i, j],
                                           atol=1.5)
    evaluation = pipeline.build_dataset(source, SQUARE, 2, False)
    batches = [{k: v.numpy() for k, v in b.items()} for b in evaluation]
    first = batches[0]
    original = np.asarray(Image.open(source.images[0].path).convert("RGB"))
    expected = preprocessing.Preprocessor.fixed_square(72, 1)(original[None])[0][0].numpy()
    np.testing.assert_allclose(first["images"][0], expected, atol=1e-3)  # = detect's resize
    assert all((b["image_sizes"] == 72).all() for b in batches)
    np.testing.assert_allclose(first["gt_boxes"][0, 0], [5 * 72 / 80, 6 * 72 / 60,
                                                         30 * 72 / 80, 40 * 72 / 60], atol=1e-4)


def test_ssd_augmentation_from_config(tmp_path):
    overrides = [f"data.synthetic.output_dir={tmp_path}", "data.synthetic.num_train=6",
                 "data.synthetic.num_val=2", "data.synthetic.image_size=128",
                 "input.size=96"]
    cfg = load_config("configs/yolact_shapes.yaml", overrides + ["data.augment=ssd"])
    seen = []
    original = pipeline.build_dataset

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    pipeline.build_dataset = spy
    try:
        train, _ = pipeline.dataset_from_config(cfg.data, cfg.input, "train", 2, True)
        val, _ = pipeline.dataset_from_config(cfg.data, cfg.input, "val", 2, False)
    finally:
        pipeline.build_dataset = original
    assert seen[0]["augment_fn"] is not None and seen[0]["flip_probability"] == 0.0
    assert seen[1]["augment_fn"] is None  # evaluation is never augmented
    for batch in train.take(6):
        b = {k: v.numpy() for k, v in batch.items()}
        assert b["images"].shape == (2, 96, 96, 3)
        assert ((b["gt_classes"] > 0).sum(axis=1) > 0).all()  # no example without instances
        valid = b["gt_classes"] > 0
        assert (b["gt_boxes"][valid] >= -1e-3).all() and (b["gt_boxes"][valid] <= 96 + 1e-3).all()
    plain = load_config("configs/yolact_shapes.yaml", overrides)
    assert plain.data.augment == "none"
    seen.clear()
    pipeline.build_dataset = spy
    try:
        pipeline.dataset_from_config(plain.data, plain.input, "train", 2, True)
    finally:
        pipeline.build_dataset = original
    assert seen[0]["augment_fn"] is None and seen[0]["flip_probability"] == 0.5


def test_augmentation_filters_examples_left_without_instances(source_files):
    source = _source(source_files, num_keypoints=0)

    def drop_image_1(example, seed):  # an augmentation that leaves image 1 without instances
        keep = tf.fill(tf.shape(example["classes"]), example["image_id"] != 1)
        return {k: tf.boolean_mask(v, keep) if k in ("boxes", "classes", "masks") else v
                for k, v in example.items()}

    ds = pipeline.build_dataset(source, SQUARE, 1, True, seed=0, augment_fn=drop_image_1)
    ids = {int(b["image_ids"][0]) for b in ds.take(12)}
    assert ids == {2, 4, 6}
