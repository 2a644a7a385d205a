"""fp16 and int8 variants of a pack's fp32 ONNX graphs.

fp16 (for GPUs): every float tensor inside the graph becomes float16, but the graph's inputs
and outputs stay float32 (`keep_io_types`). Why: the runtime's preprocessing and NMS are
numpy float32 and speciesnet's numbers are float32, so the pipeline feeds and reads the same
arrays whatever the precision; the two Cast nodes at the boundary cost nothing next to a
YOLOv5x6 or EfficientNetV2-M. Ops whose inputs must stay float (Resize scales) or that have
no fp16 kernels in onnxruntime (onnxruntime's own block list: Range, Upsample, TopK, ...)
stay float32 with casts around them; values beyond fp16's range are clamped to +-65504.
CPUs mostly lack fp16 kernels, so on CPU onnxruntime runs this variant through inserted casts:
use it on CUDA/TensorRT/DirectML/CoreML, use fp32 or int8 on CPU.

int8 (for CPUs and small devices): onnxruntime static quantization in QDQ format (what its CPU
and TensorRT kernels fuse), signed int8 weights per output channel (convolution filters of one
layer differ in scale by orders of magnitude after BatchNorm folding) and UNSIGNED 8-bit
activations (U8S8), ranges from MinMax calibration on a handful of real images. Why U8 and not
S8 activations: measured with onnxruntime 1.32 on x86-64, a QDQ graph with int8 activations is
not fused at all (every Conv runs in float between QuantizeLinear/DequantizeLinear pairs: the
full int8 detector took 5.1 s vs 2.9 s fp32), while with uint8 activations the same graph
becomes QLinearConv -> QLinearSigmoid -> QLinearMul end to end (benchmarks/NOTES.md, entry 6).
Caveat: on x86 CPUs without VNNI, U8S8 products can saturate (onnxruntime's docs suggest
reduce_range there); the pack's fidelity.json is measured on the converting machine.
Post-processing nodes (everything after the last Conv/MatMul/Gemm: YOLO's sigmoid/grid/anchor
arithmetic, the classifier's bias add) stay float: box coordinates in pixels and grid offsets
would lose whole pixels in int8. So do the output layers themselves (`output_layer_nodes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """Write an fp16 copy of SRC (float32 I/O kept); return what was done, for the report."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    fp16 = convert_float_to_float16(model, keep_io_types=True)
    _copy_metadata(model, fp16, {"edgenet.precision": "fp16"})
    onnx.save(fp16, str(dst))
    blocked = sorted({n.op_type for n in model.graph.node} & set(DEFAULT_OP_BLOCK_LIST))
    return {"precision": "fp16", "io_types": "float32", "ops_kept_float32": blocked,
            "method": "onnxruntime.transformers.float16.convert_float_to_float16"}


def _nodes_past_compute(model: Any, compute: bool) -> list[str]:
    """Names of the nodes with no Conv/MatMul/Gemm downstream: compute nodes themselves when
    COMPUTE, else the other ops."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    # feeds[i]: some Conv/MatMul/Gemm is downstream of node i. Nodes of a valid ONNX graph
    # are topologically sorted, so one backward sweep settles it.
    feeds = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        feeds[i] = any(nodes[j].op_type in COMPUTE_OPS or feeds[j]
                       for out in nodes[i].output for j in consumers.get(out, []))
    return [n.name for i, n in enumerate(nodes)
            if (n.op_type in COMPUTE_OPS) == compute and not feeds[i] and n.name]


def postprocess_nodes(model: Any) -> list[str]:
    """Names of nodes after the last compute op (no Conv/MatMul/Gemm downstream of them)."""
    return _nodes_past_compute(model, compute=False)


def output_layer_nodes(model: Any) -> list[str]:
    """Names of the compute nodes (Conv/MatMul/Gemm) with no compute node downstream: the
    layers that write the model's logits (YOLO's four Detect convolutions, the classifier's
    last dense layer). They stay float in the int8 variant (see `to_int8`)."""
    return _nodes_past_compute(model, compute=True)


class _Reader:
    """onnxruntime CalibrationDataReader over a list of input arrays."""

    def __init__(self, input_name: str, samples: Sequence[np.ndarray]):
        self.input_name = input_name
        self.samples = list(samples)
        self._it: Iterator[np.ndarray] = iter(self.samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: np.ascontiguousarray(x, np.float32)}

    def rewind(self) -> None:
        self._it = iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Strided calibration: serve samples [start_index, end_index) next."""
        self._it = iter(self.samples[start_index:end_index])


def to_int8(src: Path, dst: Path, calibration: Sequence[np.ndarray], *,
            per_channel: bool = True, float_output_layers: bool = True) -> dict[str, Any]:
    """Static QDQ int8 quantization of SRC with CALIBRATION inputs (each one model input)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not calibration:
        raise ValueError("int8 quantization needs at least one calibration input")
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    # Nodes need names to be excluded; give anonymous ones stable names first.
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    # Float: the post-processing (box arithmetic) and the output layers. An int8 output layer
    # quantizes logits, whose range spans large negative objectness offsets and positive
    # peaks, with one scale: measured on the full synthetic pack (benchmarks/NOTES.md, entry 6).
    heads = output_layer_nodes(model) if float_output_layers else []
    exclude = postprocess_nodes(model) + heads
    dst = Path(dst)
    tmp_in = dst.with_name(dst.stem + ".named.onnx")
    onnx.save(model, str(tmp_in))
    try:
        quantize_static(
            str(tmp_in),
            str(dst),
            _Reader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            # Reduce ranges after every sample (strided MinMax, stride 1): a full YOLOv5x6
            # yields GBs of activations per image, holding them all would not fit small
            # machines. (CalibMaxIntermediateOutputs would drop data in onnxruntime 1.32.)
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                           "CalibStridedMinMax": 1},
        )
    finally:
        tmp_in.unlink(missing_ok=True)
        for extra in dst.parent.glob(dst.stem + ".named*"):
            extra.unlink(missing_ok=True)
    quant = onnx.load(str(dst))
    _copy_metadata(model, quant, {"edgenet.precision": "int8"})
    onnx.save(quant, str(dst))
    return {
        "precision": "int8",
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8 symmetric" + (" per-channel" if per_channel else ""),
        "activations": "uint8 asymmetric",
        "calibration": "MinMax",
        "calibration_samples": len(calibration),
        "calibration_shapes": sorted({str(list(np.shape(x))) for x in calibration}),
        "float_postprocess_nodes": len(exclude) - len(heads),
        "float_output_layers": heads,
    }


def _copy_metadata(src_model: Any, dst_model: Any, extra: dict[str, str]) -> None:
    """Carry the fp32 graph's metadata (labels, source sha256, ...) into a variant."""
    from converters.onnx_meta import set_onnx_metadata

    props = {p.key: p.value for p in src_model.metadata_props}
    del dst_model.metadata_props[:]
    set_onnx_metadata(dst_model, {**props, **extra})
