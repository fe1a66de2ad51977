"""TensorBoard scalar event files, written directly: no TensorFlow, tensorboardX or PyTorch.

An event file is a sequence of TFRecords (little-endian uint64 length, masked CRC-32C of
those 8 bytes, the payload, masked CRC-32C of the payload), each payload an ``Event``
protocol buffer: the first names the format (``file_version``), every later one holds a
step's scalars as ``Summary.Value(tag, simple_value)``, which TensorBoard reads as scalars.
The few protobuf fields needed are encoded here by hand (tensorboard/compat/proto/event.proto
and summary.proto give the field numbers), so importing this costs nothing; tensorboardX, which
``lt_jax`` used before, imports PyTorch whenever it is installed (about 3 s per process).
"""

from __future__ import annotations

import os
import socket
import struct
import time

_CASTAGNOLI = 0x82F63B78  # CRC-32C's polynomial, bit-reversed


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CASTAGNOLI if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord frames use it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + payload
        + struct.pack("<I", _masked_crc(payload))
    )


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: negatives as their two's complement, 10 bytes
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and embedded messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str = "", scalars=()) -> bytes:
    """``Event{wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5}``
    with ``Summary{value = 1: Value{tag = 1, simple_value = 2 (float)}}``."""
    out = b"\x09" + struct.pack("<d", wall_time)  # field 1, wire type 1 (64-bit)
    if step:
        out += b"\x10" + _varint(step)  # field 2, wire type 0 (varint)
    if file_version:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
            for tag, value in scalars
        )  # simple_value: field 2, wire type 5 (32-bit)
        out += _field(5, values)
    return out


class EventWriter:
    """Appends scalars to a new event file in ``logdir`` (created), flushed at each write,
    so TensorBoard shows a run while it trains and a killed run loses nothing written."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._file.write(_record(event))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event at ``step`` with every ``tag: value`` of ``values``."""
        if values:
            self._write(_event(time.time(), int(step), scalars=list(values.items())))

    def close(self) -> None:
        self._file.close()
