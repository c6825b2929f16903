"""Hostile images (issue 20 items 2 and 4): a 16-bit PNG means the same pixels to predict, the
COCO loader, the TFRecord reader and serving; decompression bombs are refused from their
header, before decoding, with one line naming the file."""
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_maskrcnn import predict
from keras_maskrcnn.data import coco, image_graph, images, synthetic, tfrecord
from support import CONFIGS


def _bomb_png(path, width, height, rows=None):
    """A gray PNG of width x height zeros, written row by row (a few hundred KB on disk);
    ``rows``: only that many rows of data (a header that promises more than it holds)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    packer, row = zlib.compressobj(9), b"\x00" * (width + 1)  # filter byte + zeros
    idat = b"".join(packer.compress(row) for _ in range(height if rows is None else rows))
    idat += packer.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                                 0, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return str(path)


def _one_image_coco(root, pixels, name):
    """A COCO json of one image file (``pixels`` written as ``name``) with one box."""
    os.makedirs(root / "images", exist_ok=True)
    Image.fromarray(pixels).save(root / "images" / name)
    h, w = pixels.shape[:2]
    data = {"images": [{"id": 1, "file_name": name, "height": h, "width": w}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "bbox": [2, 2, 10, 10], "area": 100}]}
    with open(root / "instances.json", "w") as f:
        json.dump(data, f)
    return str(root / "instances.json"), str(root / "images")


def test_sixteen_bit_png_is_the_same_everywhere_and_not_white(tmp_path):
    gray16 = (np.arange(32 * 48, dtype=np.uint32).reshape(32, 48) * 41 % 65536).astype(np.uint16)
    want = np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, -1)  # the high byte
    ann, image_dir = _one_image_coco(tmp_path, gray16, "deep.png")
    path = os.path.join(image_dir, "deep.png")
    from_predict = predict.read_image(path)
    from_coco = coco.load_coco(ann, image_dir).load_example(0)["image"]
    tfrecord.write_tfrecords(ann, image_dir, str(tmp_path / "rec" / "r"), 1, progress=False)
    source = tfrecord.load_tfrecords(str(tmp_path / "rec" / "r-*"), ann)
    record = next(iter(source.record_dataset(training=False)))
    from_records = source.decode_stage(None, with_masks=False)(record)["image"].numpy()
    with open(path, "rb") as f:
        from_graph = image_graph.decode_image_tensor(tf.constant(f.read())).numpy()
    assert (from_predict == 255).mean() < 0.01  # main: ~99% white (convert("RGB") clips I;16)
    for got in (from_predict, from_coco, from_records, from_graph):
        np.testing.assert_array_equal(got, want)


def test_predict_refuses_a_10000x10000_png_before_decoding(tmp_path, capsys):
    bomb = _bomb_png(tmp_path / "bomb.png", 10000, 10000)
    assert os.path.getsize(bomb) < 1_000_000
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--config", os.path.join(CONFIGS, "tiny.yaml"), "--image", bomb,
                      "--output", str(tmp_path / "out.png")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "bomb.png: 10000x10000 = 100000000 pixels exceeds max_image_pixels 80000000" \
        in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_pil_bomb_error_becomes_an_image_error(tmp_path):
    bomb = _bomb_png(tmp_path / "huge.png", 20000, 20000, rows=1)  # over PIL's 2 x 89.5 MP
    with pytest.raises(images.ImageTooLargeError, match="huge.png"):
        images.read_image(bomb, max_pixels=None)
    with pytest.raises(images.ImageTooLargeError, match="huge.png"):
        images.image_size(bomb)


def test_loaders_skip_images_over_the_cap_and_name_them(tmp_path, caplog):
    pixels = np.zeros((40, 50, 3), np.uint8)  # 2000 pixels
    ann, image_dir = _one_image_coco(tmp_path, pixels, "big.png")
    dataset = coco.load_coco(ann, image_dir)
    assert dataset.load_example(0, max_pixels=1999) is None
    assert "exceeds max_image_pixels 1999" in dataset.stats.skipped_images[0][1]
    assert "big.png" in caplog.text
    tfrecord.write_tfrecords(ann, image_dir, str(tmp_path / "rec" / "r"), 1, progress=False)
    source = tfrecord.load_tfrecords(str(tmp_path / "rec" / "r-*"), ann)
    record = next(iter(source.record_dataset(training=False)))
    out = source.decode_stage(None, with_masks=False, max_pixels=1999)(record)
    assert not bool(out["valid"])
    assert "exceeds max_image_pixels 1999" in source.stats.skipped_images[0][1]
    fresh = coco.load_coco(ann, image_dir)  # (a skipped image stays skipped in its dataset)
    assert fresh.load_example(0, max_pixels=2000)["image"].shape == (40, 50, 3)


def test_writer_leaves_out_unreadable_and_mis_sized_images(tmp_path, caplog):
    ann_file, image_dir = synthetic.write_synthetic_dataset(
        str(tmp_path / "shapes"), 3, 0, seed=4, image_size=40)["train"]
    with open(ann_file) as f:
        files = [im["file_name"] for im in sorted(json.load(f)["images"], key=lambda i: i["id"])]
    with open(os.path.join(image_dir, files[0]), "wb") as f:
        f.write(b"garbage, not an image")
    Image.fromarray(np.zeros((41, 40, 3), np.uint8)).save(os.path.join(image_dir, files[1]),
                                                          format="JPEG")
    stats = tfrecord.write_tfrecords(ann_file, image_dir, str(tmp_path / "rec" / "r"), 1,
                                     progress=False)
    assert stats["num_images"] == 1  # main: 3 written, 2 of them unusable by every reader
    assert [name for name, _ in stats["bad_images"]] == files[:2]
    assert "not an image file" in stats["bad_images"][0][1]
    assert "header says 41x40 (height x width), the json 40x40" in stats["bad_images"][1][1]
    assert f"not writing image {files[1]}" in caplog.text
