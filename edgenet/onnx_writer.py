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

FLOAT, UINT8, INT8, INT32, FLOAT16 = 1, 2, 3, 6, 10  # TensorProto.DataType values used


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


def value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
    """ValueInfoProto; an int dim is fixed (dim_value), a str dim is named (dim_param)."""
    shape = b"".join(field_bytes(1, field_varint(1, d) if isinstance(d, int) else
                                 field_bytes(2, d)) for d in dims)  # TensorShapeProto.dim
    tensor_type = field_varint(1, elem_type) + field_bytes(2, shape)
    return field_bytes(1, name) + field_bytes(2, field_bytes(1, tensor_type))


def tensor(name: str, arr: np.ndarray, elem_type: int) -> bytes:
    """TensorProto: dims (1), data_type (2), name (8), raw_data (9, little-endian)."""
    import numpy as np

    dims = b"".join(field_varint(1, d) for d in arr.shape)
    raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    return dims + field_varint(2, elem_type) + field_bytes(8, name) + field_bytes(9, raw)


def attr_int(name: str, value: int) -> bytes:
    """AttributeProto: name (1), i (3), type (20) = INT (2)."""
    return field_bytes(1, name) + field_varint(3, value) + field_varint(20, 2)


def attr_ints(name: str, values: Sequence[int]) -> bytes:
    """AttributeProto: name (1), ints (8), type (20) = INTS (7)."""
    return field_bytes(1, name) + b"".join(field_varint(8, v) for v in values) + field_varint(20, 7)


def node(op: str, inputs: Sequence[str], outputs: Sequence[str], *attrs: bytes) -> bytes:
    """NodeProto: input (1), output (2), op_type (4), attribute (5)."""
    return (b"".join(field_bytes(1, i) for i in inputs)
            + b"".join(field_bytes(2, o) for o in outputs)
            + field_bytes(4, op) + b"".join(field_bytes(5, a) for a in attrs))


def model(nodes: Sequence[bytes], name: str, inputs: Sequence[bytes], outputs: Sequence[bytes],
          initializers: Sequence[bytes] = (), opset: int = 13) -> bytes:
    """ModelProto (ir_version 7, default domain at OPSET) around one GraphProto: node (1),
    name (2), initializer (5), input (11), output (12)."""
    graph = (b"".join(field_bytes(1, n) for n in nodes) + field_bytes(2, name)
             + b"".join(field_bytes(5, t) for t in initializers)
             + b"".join(field_bytes(11, v) for v in inputs)
             + b"".join(field_bytes(12, v) for v in outputs))
    opset_id = field_bytes(1, "") + field_varint(2, opset)
    return (field_varint(1, 7) + field_bytes(2, "edgenet") + field_bytes(7, graph)
            + field_bytes(8, opset_id))


def unit_float_model_bytes(float16: bool = False, nchw: bool = True) -> bytes:
    """uint8 NHWC `pixels` -> `tensor` = float32(x) / 255, transposed to NCHW when NCHW (the
    detector's `to_tensor`; the classifier's `preprocess_input` keeps NHWC), then float16 for
    a model that takes float16, as `astype` would round it.

    Why: on a GPU the pipeline's float conversion and a float32 host->device copy 4x the size
    of the pixels run in front of every device call on the CPU (benchmarks/NOTES.md entries 9
    and 23); a session running this graph on the device removes both (`EDGENET_DEVICE_PIXELS`).
    float32 division is correctly rounded on the CPU provider, so the result is bit-equal to
    the numpy conversion there (tests); `benchmarks/gpu_probe.py` checks the same on CUDA.
    """
    import numpy as np

    out = "converted" if float16 else "tensor"
    scaled = "scaled" if nchw else out
    nodes = [node("Cast", ["pixels"], ["as_float"], attr_int("to", FLOAT)),
             node("Div", ["as_float", "d255"], [scaled])]
    if nchw:
        nodes.append(node("Transpose", [scaled], [out], attr_ints("perm", [0, 3, 1, 2])))
    if float16:
        nodes.append(node("Cast", [out], ["tensor"], attr_int("to", FLOAT16)))
    dims: list[int | str] = ["n", 3, "h", "w"] if nchw else ["n", "h", "w", 3]
    return model(nodes, "to_unit_float", [value_info("pixels", UINT8, ["n", "h", "w", 3])],
                 [value_info("tensor", FLOAT16 if float16 else FLOAT, dims)],
                 [tensor("d255", np.array(255, np.float32), FLOAT)])
