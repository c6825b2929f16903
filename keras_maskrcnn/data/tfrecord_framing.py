"""TFRecord file framing, scanned without reading payloads: find where a truncated or corrupt
shard stops being readable, so the intact records before it are kept (data input, no paper
section).

Conventions pinned here (tests/reliability/test_tfrecord_shards.py checks them):
    * A TFRecord file is a sequence of records, each framed as TensorFlow's
      ``core/lib/io/record_writer`` writes it: uint64 little-endian payload length, uint32
      masked CRC-32C of those 8 bytes, the payload, uint32 masked CRC-32C of the payload
      (mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8, modulo 2^32).
    * ``scan_shard`` reads only the 12-byte headers and seeks over the payloads: it checks
      each length's CRC and that the payload and its CRC fit in the file. The first record
      failing either ends the intact prefix (``ShardScan.num_records`` records); the payload
      CRCs are left to TensorFlow's reader (a corrupt payload inside the prefix still raises
      its DataLossError when read).
    * Only local files are scanned (one seek per record); remote ones (gs://, ...) are
      taken as whole.

Shape shorthand: none (files and byte offsets).
"""
import dataclasses
import os
import struct
from typing import Optional

_MASK_DELTA = 0xA282EAD8
_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def _table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (table-driven; meant for the 8-byte length fields)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class ShardScan:
    """What ``scan_shard`` found in one file.

    Attributes:
        path: the file. num_records: records of the intact prefix.
        intact_bytes: bytes of the intact prefix; file_bytes: the file's size.
        problem: None for a whole file, else what ends the prefix (in words).
    """

    path: str
    num_records: int
    intact_bytes: int
    file_bytes: int
    problem: Optional[str] = None

    @property
    def lost_bytes(self) -> int:
        return self.file_bytes - self.intact_bytes


def scan_shard(path) -> ShardScan:
    """Scans a local TFRecord file's framing (module docstring). Raises OSError when the file
    cannot be read."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    count, offset = 0, 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                return ShardScan(path, count, offset, size, f"record {count + 1} starts at "
                                 f"byte {offset} but its 12-byte header is cut off")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                return ShardScan(path, count, offset, size, f"record {count + 1} at byte "
                                 f"{offset}: its length field fails its CRC (corrupt)")
            end = offset + 12 + length + 4
            if end > size:
                return ShardScan(path, count, offset, size, f"record {count + 1} at byte "
                                 f"{offset} needs {length + 16} bytes, the file ends "
                                 f"{size - offset} bytes after its start (truncated)")
            f.seek(length + 4, os.SEEK_CUR)
            count, offset = count + 1, end
    return ShardScan(path, count, offset, size)


def is_local(path) -> bool:
    """Whether ``path`` is a local file (scanned); gs://, s3://, hdfs://, ... are not."""
    return "://" not in os.fspath(path)
