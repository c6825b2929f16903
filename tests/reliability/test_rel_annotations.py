"""Issue 20 item 1: a compressed RLE whose counts cover fewer (or more) than H x W pixels is a
defect (pycocotools' decode would fill the missing pixels with uninitialised memory): left
out and listed by annotation id (lenient), or an error naming the file, the annotation id and
the field (strict), in the COCO loader and the TFRecord writer alike."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from keras_maskrcnn.data import coco, coco_json, tfrecord
from keras_maskrcnn.data import synthetic


def _counts_end_positions(counts):
    """Indices of the characters that end a count (bit 0x20 clear: no more groups)."""
    return [i for i, c in enumerate(counts) if not (ord(c) - 48) & 0x20]


def _rles(height, width):
    """{name: compressed RLE of the image size} : good, cut short, covering too much."""
    mask = np.zeros((height, width), np.uint8)
    mask[5:20, 8:30] = 1
    good = mask_utils.encode(np.asfortranarray(mask))
    counts = good["counts"].decode("ascii")
    ends = _counts_end_positions(counts)
    short = counts[:ends[-2] + 1]  # the last run (of 0s) dropped: H * W - that run
    taller = np.zeros((height + 1, width), np.uint8)  # one more row of 0s per column
    taller[5:20, 8:30] = 1
    more = mask_utils.encode(np.asfortranarray(taller))["counts"].decode("ascii")
    return {"good": counts, "short": short, "more": more}


@pytest.fixture
def dataset(tmp_path):
    ann_file, image_dir = synthetic.write_synthetic_dataset(
        str(tmp_path / "shapes"), 2, 0, seed=1, image_size=64)["train"]
    with open(ann_file) as f:
        data = json.load(f)
    rles = _rles(64, 64)
    for name, ann_id in (("good", 901), ("short", 902), ("more", 903)):
        data["annotations"].append({
            "id": ann_id, "image_id": data["images"][0]["id"], "category_id": 1,
            "iscrowd": 0, "bbox": [8, 5, 22, 15], "area": 330,
            "segmentation": {"size": [64, 64], "counts": rles[name]}})
    with open(ann_file, "w") as f:
        json.dump(data, f)
    return ann_file, image_dir


def test_rle_parser_reads_pycocotools_counts():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")
        runs = coco_json.compressed_rle_counts(counts)
        assert sum(runs) == h * w and sum(runs[1::2]) == mask.sum()
        decoded = np.repeat(np.arange(len(runs)) % 2, runs).reshape(w, h).T  # column-major
        np.testing.assert_array_equal(decoded, mask)
    with pytest.raises(ValueError, match="ends inside a count"):
        coco_json.compressed_rle_counts("0Q")  # 'Q' has the "more" bit: cut off
    with pytest.raises(ValueError, match="not in"):
        coco_json.compressed_rle_counts("0~")


def test_loader_leaves_out_rles_of_the_wrong_coverage(dataset):
    ann_file, image_dir = dataset
    loaded = coco.load_coco(ann_file, image_dir)
    dropped = loaded.report.dropped[coco_json.BAD_SEGMENTATION]
    assert sorted(dropped) == [902, 903]
    problems = loaded.report.first_problem[coco_json.BAD_SEGMENTATION]
    assert "annotation 902: segmentation: compressed RLE counts cover" in problems
    assert "expected height * width = 4096" in problems
    example = loaded.load_example(0)  # the good RLE (901) is kept and decodes to its mask
    assert example["masks"][-1].sum() == 15 * 22


def test_strict_names_the_file_the_annotation_and_the_field(dataset):
    ann_file, image_dir = dataset
    with pytest.raises(coco_json.CocoFormatError, match=r"instances_train\.json: annotation "
                                                        r"902: segmentation: compressed RLE"):
        coco.load_coco(ann_file, image_dir, strict=True)


def test_writer_leaves_them_out_too(dataset, tmp_path):
    ann_file, image_dir = dataset
    stats = tfrecord.write_tfrecords(ann_file, image_dir, str(tmp_path / "rec" / "r"), 1,
                                     progress=False)
    assert sorted(stats["report"].dropped[coco_json.BAD_SEGMENTATION]) == [902, 903]
    with pytest.raises(coco_json.CocoFormatError, match="annotation 902: segmentation"):
        tfrecord.write_tfrecords(ann_file, image_dir, str(tmp_path / "rec2" / "r"), 1,
                                 progress=False, strict=True)
