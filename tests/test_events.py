"""lt_jax.events against the published CRC-32C check value, hand-assembled bytes, and
tensorboardX's own Event protobuf classes as the reader."""

import glob
import struct

import pytest

from lt_jax import events


def _crc32c_bitwise(data: bytes) -> int:
    """CRC-32C one bit at a time (RFC 3720, appendix B.4), no table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def test_crc32c_check_values():
    assert events.crc32c(b"123456789") == 0xE3069283  # the catalogued CRC-32C check value
    assert events.crc32c(b"") == 0
    assert events.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    data = bytes(range(256)) * 3
    assert events.crc32c(data) == _crc32c_bitwise(data)


def test_a_scalar_event_is_the_protobuf_bytes_by_hand():
    got = events._event(0.5, 300, scalars=[("a", 1.5)])
    want = (
        b"\x09"
        + struct.pack("<d", 0.5)  # wall_time
        + b"\x10\xac\x02"  # step 300 as a varint: 0b10_0101100
        + b"\x2a\x0a"  # summary, 10 bytes
        + b"\x0a\x08"  # value, 8 bytes
        + b"\x0a\x01a"  # tag "a"
        + b"\x15"
        + struct.pack("<f", 1.5)  # simple_value
    )
    assert got == want


def _records(path):
    """Each TFRecord payload of ``path``, both CRCs checked with the bitwise CRC-32C."""
    out = []
    with open(path, "rb") as f:
        while header := f.read(12):
            length = header[:8]
            assert _unmask(struct.unpack("<I", header[8:])[0]) == _crc32c_bitwise(length)
            payload = f.read(struct.unpack("<Q", length)[0])
            (crc,) = struct.unpack("<I", f.read(4))
            assert _unmask(crc) == _crc32c_bitwise(payload)
            out.append(payload)
    return out


def test_tensorboardx_reads_what_the_writer_wrote(tmp_path):
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    writer = events.EventWriter(str(tmp_path / "stage1"))
    writer.scalars(0, {"stage1/train/lr": 0.1})
    writer.scalars(7, {"stage1/train/loss": 2.25, "stage1/test/top1": 0.625})
    writer.scalars(2**40 + 3, {"stage1/train/lr": 1e-4})
    writer.scalars(9, {})  # nothing to write: no event
    writer.close()
    (path,) = glob.glob(str(tmp_path / "stage1" / "events.out.tfevents.*"))
    parsed = [event_pb2.Event.FromString(p) for p in _records(path)]
    assert parsed[0].file_version == "brain.Event:2" and len(parsed) == 4
    got = [(e.step, v.tag, v.simple_value) for e in parsed[1:] for v in e.summary.value]
    assert got == [
        (0, "stage1/train/lr", pytest.approx(0.1)),
        (7, "stage1/train/loss", 2.25),
        (7, "stage1/test/top1", 0.625),
        (2**40 + 3, "stage1/train/lr", pytest.approx(1e-4)),
    ]
    assert all(e.wall_time > 1.6e9 for e in parsed)
