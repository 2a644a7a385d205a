"""A copy of an ONNX model with its large initializers moved, byte for byte, into a weights file.

Why: a single-file ONNX model is one protobuf message, which onnxruntime parses and copies
into tensors at every session build; with the initializers in an external data file it maps
that file instead. The CPU provider gets this from `graph_cache`'s optimised graphs; this copy
is for providers whose graph cannot be cached optimised (they partition it when the session is
built): the same graph, only its weights' storage differs, so the outputs are bit-identical.
Measured on the full-size pack (benchmarks/NOTES.md, entry 24): onnxruntime-openvino's bf16
detector session built in 0.34-0.39 s instead of 1.8-2.4 s, with a peak RSS of 1.1 GB instead
of 2.8 GB; the CPU provider with optimisation off, 0.04 s instead of 0.50 s.

Written without the `onnx` package (a converter-only dependency) by walking the protobuf
framing (`pack.field_spans`): every field is copied as it is, except each top-level
initializer's `raw_data` of at least `min_bytes`, which goes to the weights file and is
replaced by `external_data` entries (location, offset, length) and `data_location = EXTERNAL`.
Tensors of a megabyte or more start at 64 KiB offsets (Windows maps files at that
granularity, as onnxruntime's own saver aligns), smaller ones at 4 KiB.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

from edgenet.onnx_writer import field_bytes, field_varint
from edgenet.pack import FieldSpan, field_spans

_GRAPH, _INITIALIZER = 7, 5  # ModelProto.graph, GraphProto.initializer
_RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 9, 13, 14  # TensorProto fields
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_LARGE_BYTES = 1 << 20
_LARGE_ALIGN, _SMALL_ALIGN = 65536, 4096


class _AlreadyExternal(Exception):
    """The model already keeps tensors outside its file: a copy elsewhere would lose them."""


def _entry(key: str, value: str) -> bytes:
    """TensorProto.external_data: a StringStringEntryProto (key 1, value 2)."""
    return field_bytes(_EXTERNAL_DATA, field_bytes(1, key) + field_bytes(2, value))


class _WeightsWriter:
    def __init__(self, fh: Any, name: str) -> None:
        self.fh, self.name, self.offset = fh, name, 0

    def add(self, data: bytes) -> bytes:
        """Append DATA at an aligned offset; the external_data fields that point at it."""
        align = _LARGE_ALIGN if len(data) >= _LARGE_BYTES else _SMALL_ALIGN
        pad = -self.offset % align
        if pad:
            self.fh.write(b"\0" * pad)
            self.offset += pad
        start = self.offset
        self.fh.write(data)
        self.offset += len(data)
        return (_entry("location", self.name) + _entry("offset", str(start))
                + _entry("length", str(len(data))))


def _tensor(buf: Any, tensor: FieldSpan, weights: _WeightsWriter, min_bytes: int) -> bytes:
    """The initializer field TENSOR, its raw data moved to WEIGHTS when large enough."""
    fields = list(field_spans(buf, *tensor.value))
    if any(f.num == _DATA_LOCATION and f.value == _EXTERNAL for f in fields):
        raise _AlreadyExternal
    raw = next((f for f in fields if f.num == _RAW_DATA and f.wire == 2), None)
    if raw is None or raw.value[1] - raw.value[0] < min_bytes:
        return bytes(buf[tensor.start:tensor.end])
    kept = b"".join(bytes(buf[f.start:f.end]) for f in fields if f is not raw)
    moved = weights.add(buf[raw.value[0]:raw.value[1]])
    return field_bytes(_INITIALIZER, kept + moved + field_varint(_DATA_LOCATION, _EXTERNAL))


def write_mapped_copy(source: Path, folder: Path, graph_name: str, weights_name: str,
                      min_bytes: int = 1024) -> bool:
    """Write `folder/graph_name` (SOURCE's graph) and `folder/weights_name` (its initializers of
    at least MIN_BYTES). False, with nothing useful written, where SOURCE has no such
    initializer or already keeps data outside its file. Raises `pack.FramingError` for a
    truncated or corrupt SOURCE and OSError for I/O failures."""
    with open(source, "rb") as src, mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        top = list(field_spans(buf, 0, len(buf)))
        graphs = [f for f in top if f.num == _GRAPH and f.wire == 2]
        if len(graphs) != 1:
            return False
        graph_parts: list[bytes] = []
        with open(folder / weights_name, "wb") as wfh:
            weights = _WeightsWriter(wfh, weights_name)
            try:
                for f in field_spans(buf, *graphs[0].value):
                    if f.num == _INITIALIZER and f.wire == 2:
                        graph_parts.append(_tensor(buf, f, weights, min_bytes))
                    else:
                        graph_parts.append(bytes(buf[f.start:f.end]))
            except _AlreadyExternal:
                return False
            if weights.offset == 0:
                return False
        graph = field_bytes(_GRAPH, b"".join(graph_parts))
        model = b"".join(graph if f is graphs[0] else bytes(buf[f.start:f.end]) for f in top)
    (folder / graph_name).write_bytes(model)
    return True


__all__ = ["write_mapped_copy"]
