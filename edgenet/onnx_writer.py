"""A minimal ONNX (protobuf) writer for the few tiny graphs the runtime builds itself.

`edgenet doctor` (a MatMul session per provider) and `edgenet bench` (matmul peak models) need
small models without the `onnx` package, which is a converter-only dependency. Field numbers
follow onnx.proto3; only what those graphs use is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

FLOAT, UINT8, INT8, INT32 = 1, 2, 3, 6  # TensorProto.DataType values used here


def varint(value: int) -> bytes:
    """Protobuf base-128 varint (negative values as their 64-bit two's complement)."""
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def field_bytes(num: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return varint((num << 3) | 2) + varint(len(data)) + data


def value_info(name: str, elem_type: int, dims: Sequence[int]) -> bytes:
    """ValueInfoProto with a fixed tensor shape."""
    shape = b"".join(field_bytes(1, field_varint(1, d)) for d in dims)  # Dimension.dim_value
    tensor_type = field_varint(1, elem_type) + field_bytes(2, shape)
    return field_bytes(1, name) + field_bytes(2, field_bytes(1, tensor_type))


def tensor(name: str, arr: np.ndarray, elem_type: int) -> bytes:
    """TensorProto: dims (1), data_type (2), name (8), raw_data (9, little-endian)."""
    import numpy as np

    dims = b"".join(field_varint(1, d) for d in arr.shape)
    raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    return dims + field_varint(2, elem_type) + field_bytes(8, name) + field_bytes(9, raw)
