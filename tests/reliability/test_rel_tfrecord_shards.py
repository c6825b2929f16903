"""Issue 20 item 11 (TFRecord half): a truncated (or corrupt-framed) shard is named in a
warning with the records kept and the bytes lost, and its intact records are read; not a
DataLossError without a file name."""
import logging
import os
import struct

import pytest
import tensorflow as tf

from keras_maskrcnn.config import InputConfig
from keras_maskrcnn.data import pipeline, synthetic, tfrecord, tfrecord_framing


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ann_file, image_dir = synthetic.write_synthetic_dataset(
        str(root / "shapes"), 8, 0, seed=2, image_size=48)["train"]
    stats = tfrecord.write_tfrecords(ann_file, image_dir, str(root / "rec" / "r"), 2,
                                     progress=False)
    return ann_file, stats["files"]


def _damaged_copy(path, out, cut=None, flip_length_of=None):
    """A copy of ``path`` cut to ``cut`` bytes, or with record ``flip_length_of``'s length
    field changed (its CRC then fails)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if flip_length_of is not None:
        offset = 0
        for _ in range(flip_length_of):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            offset += 16 + length
        data[offset] ^= 0x01
    with open(out, "wb") as f:
        f.write(bytes(data[:cut]))
    return str(out)


def test_scan_agrees_with_tensorflow_on_a_whole_file(shards):
    _, files = shards
    for path in files:
        scan = tfrecord_framing.scan_shard(path)
        assert scan.problem is None and scan.intact_bytes == os.path.getsize(path)
        assert scan.num_records == sum(1 for _ in tf.data.TFRecordDataset(path))
    assert tfrecord_framing.masked_crc32c(b"") == 0xA282EAD8  # CRC-32C of nothing is 0


@pytest.mark.parametrize("damage", ["cut_in_payload", "cut_in_header", "bad_length_crc"])
def test_a_damaged_shard_keeps_its_intact_records_and_is_named(shards, tmp_path, caplog,
                                                              damage):
    _, files = shards
    whole = tfrecord_framing.scan_shard(files[0])  # 4 records
    size = os.path.getsize(files[0])
    kwargs = {"cut_in_payload": {"cut": size - 100}, "cut_in_header": {"cut": None},
              "bad_length_crc": {"flip_length_of": 3}}[damage]
    if damage == "cut_in_header":  # 5 bytes into the last record's header
        offset = 0
        with open(files[0], "rb") as f:
            for _ in range(whole.num_records - 1):
                f.seek(offset)
                (length,) = struct.unpack("<Q", f.read(8))
                offset += 16 + length
        kwargs = {"cut": offset + 5}
    damaged = _damaged_copy(files[0], tmp_path / "r-00000-of-00002.tfrecord", **kwargs)
    _damaged_copy(files[1], tmp_path / "r-00001-of-00002.tfrecord")
    with caplog.at_level(logging.WARNING):
        source = tfrecord.load_tfrecords(str(tmp_path / "r-*"))  # categories from the records
    assert f"TFRecord shard {damaged} is damaged" in caplog.text
    assert f"reading its {whole.num_records - 1} intact records" in caplog.text
    count = sum(1 for _ in source.record_dataset(training=False))
    assert count == 2 * whole.num_records - 1  # main: DataLossError, no file named
    dataset = pipeline.build_dataset(source, InputConfig(min_size_train=(48,), min_size_test=48, max_size=64), 2,
                                     training=False)
    ids = [i for batch in dataset for i in batch["image_ids"].numpy()]
    assert len(ids) == count and len(set(ids)) == count
