"""Arithmetic and memory cost of an ONNX graph, from the graph alone (no inference run).

Why: the throughput targets are judged against the machine's arithmetic limit, so we need the
work per image of each model at the shape it actually runs (the detector at 1280x960, the
classifier at 480x480) rather than a number quoted for another resolution. The count is the
usual convention: a multiply-accumulate is two FLOPs; Conv, ConvTranspose, MatMul and Gemm
(and their quantized forms) dominate; elementwise, pooling, normalisation and resize ops are
counted as one FLOP per output element (a minor share, reported separately).

`onnx` is not a runtime dependency of edgenet: it is imported inside `count_model` only (it
comes with the `bench` and `convert` extras).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenet.errors import EdgenetError

# Ops whose cost is a multiply-accumulate per (output element x reduction element).
MATRIX_OPS = frozenset(
    {
        "Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "FusedConv",
        "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "Gemm", "FusedGemm",
    }
)
# Ops that only move or reinterpret data: no arithmetic.
_DATA_MOVEMENT_OPS = frozenset(
    {
        "Reshape", "Transpose", "Concat", "Slice", "Gather", "GatherElements", "Split",
        "Squeeze", "Unsqueeze", "Flatten", "Shape", "Size", "Constant", "ConstantOfShape",
        "Identity", "Cast", "Expand", "Tile", "Pad", "Range", "Where", "DepthToSpace",
        "SpaceToDepth", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    }
)
# Ops whose cost scales with the kernel window (one FLOP per window element per output).
_POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})
# Reductions over the whole input: one FLOP per input element.
_REDUCE_OPS = frozenset(
    {
        "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax",
        "ReduceMin", "ReduceProd", "ReduceL2", "ReduceLogSumExp", "ArgMax", "ArgMin",
    }
)

# Bytes per element of ONNX TensorProto data types (the ones a vision model uses).
_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


@dataclass
class OpCost:
    """Totals for one op type across the graph."""

    count: int = 0
    flops: int = 0


@dataclass
class ModelCost:
    """Work and bytes of one model at one input shape (all counts for the whole batch)."""

    path: str
    input_shapes: dict[str, list[int]]
    flops: int
    macs: int
    matrix_flops: int
    other_flops: int
    weight_bytes: int
    activation_bytes: int
    input_bytes: int
    by_op: dict[str, OpCost] = field(default_factory=dict)
    unknown_shapes: list[str] = field(default_factory=list)
    shape_inference: str = "onnx"

    @property
    def gflops(self) -> float:
        """Convenience: FLOPs in units of 1e9."""
        return self.flops / 1e9

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved, counting weights read once and activations written+read."""
        moved = self.weight_bytes + 2 * self.activation_bytes + self.input_bytes
        return self.flops / moved if moved else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `edgenet bench` and the NOTES generator store)."""
        return {
            "path": self.path,
            "input_shapes": self.input_shapes,
            "flops": self.flops,
            "gflops": round(self.gflops, 3),
            "macs": self.macs,
            "matrix_flops": self.matrix_flops,
            "other_flops": self.other_flops,
            "weight_bytes": self.weight_bytes,
            "activation_bytes": self.activation_bytes,
            "input_bytes": self.input_bytes,
            "arithmetic_intensity_flops_per_byte": round(self.arithmetic_intensity, 2),
            "by_op": {
                k: {"count": v.count, "flops": v.flops}
                for k, v in sorted(self.by_op.items(), key=lambda kv: -kv[1].flops)
            },
            "unknown_shapes": self.unknown_shapes,
            "shape_inference": self.shape_inference,
        }


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def _static_dims(type_proto: Any) -> tuple[list[int] | None, int]:
    """(dims or None when any dim is unknown, element type) of a ValueInfo's tensor type."""
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None, tt.elem_type
    dims: list[int] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            return None, tt.elem_type
    return dims, tt.elem_type


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _fix_inputs(model: Any, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Pin every graph input to a static shape (given, or the graph's own when already static)."""
    init_names = {t.name for t in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in init_names]
    fixed: dict[str, list[int]] = {}
    for inp in real_inputs:
        if inp.name in input_shapes:
            dims = [int(x) for x in input_shapes[inp.name]]
        elif len(real_inputs) == 1 and len(input_shapes) == 1:
            # One input and one shape given under another name: take it (convenience).
            dims = [int(x) for x in next(iter(input_shapes.values()))]
        else:
            static, _ = _static_dims(inp.type)
            if static is None:
                raise EdgenetError(
                    f"input {inp.name!r} has dynamic dimensions and no shape was given",
                    path=None,
                    fix=f"pass input_shapes={{{inp.name!r}: [...]}}",
                )
            dims = static
        shape = inp.type.tensor_type.shape
        if len(shape.dim) != len(dims):
            raise EdgenetError(
                f"input {inp.name!r} has rank {len(shape.dim)}, shape given {dims}",
                fix="give a shape of the graph input's rank",
            )
        for d, v in zip(shape.dim, dims, strict=True):
            d.Clear()
            d.dim_value = v
        fixed[inp.name] = dims
    return fixed


def _run_shapes(model: Any) -> Any | None:
    """MODEL, its value_info replaced by every node output's shape as measured by running it
    once on zeros through onnxruntime (graph optimisation off, so the nodes are the file's
    own), or None (MODEL unchanged).

    Why: static inference cannot know shapes that depend on computed values, e.g. the
    explicit "SAME" padding tf2onnx writes as Pad(x, Cast(...)) at the classifier's stem:
    onnx then loses every shape after it, and onnxruntime's symbolic inference guessed the
    squeeze-excite convolutions at 30 x 30 instead of 1 x 1 (NOTES.md entry 8). Running the
    graph measures them; it costs one forward and that forward's activations in memory.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    seen = {o.name for o in probe.graph.output}
    names = [o for n in probe.graph.node for o in n.output if o and o not in seen]
    for name in names:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        feeds = {}
        for inp in sess.get_inputs():
            dtype = onnx.helper.tensor_dtype_to_np_dtype(
                next(i for i in model.graph.input if i.name == inp.name).type.tensor_type.elem_type)
            feeds[inp.name] = np.zeros(inp.shape, dtype=dtype)
        values = sess.run([o.name for o in sess.get_outputs()], feeds)
    except Exception:  # noqa: BLE001 - e.g. too large for memory: fall back to inference
        return None
    del probe  # the copy with extra outputs; MODEL (count_model's own copy) gets the shapes
    del model.graph.value_info[:]
    for meta, value in zip(sess.get_outputs(), values, strict=True):
        arr = np.asarray(value)
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(
            meta.name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
    return model


def _static_infer(model: Any) -> Any:
    """onnx's shape inference (data propagation resolves Shape->Reshape chains)."""
    import onnx

    return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


def _infer(model: Any) -> tuple[Any, str]:
    """Shape-infer with onnx; when matrix op outputs stay unknown, measure the shapes by
    running the graph once (`_run_shapes`), and only if that fails use onnxruntime's symbolic
    inference."""
    inferred = _static_infer(model)
    if not _missing_matrix_shapes(inferred):
        return inferred, "onnx"
    measured = _run_shapes(model)
    if measured is not None and not _missing_matrix_shapes(measured):
        return measured, "onnxruntime-run"
    return _symbolic(model, inferred)


def _symbolic(model: Any, inferred: Any) -> tuple[Any, str]:
    """onnxruntime's symbolic shape inference (needs sympy) when it knows more than INFERRED;
    its guesses can be wrong (see `_run_shapes`), so it is the last resort."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        sym = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if sym is not None and len(_missing_matrix_shapes(sym)) < len(
            _missing_matrix_shapes(inferred)
        ):
            return sym, "onnxruntime-symbolic"
    except Exception:  # noqa: BLE001 - optional fallback; keep the onnx result
        pass
    return inferred, "onnx"


def _shape_table(model: Any) -> tuple[dict[str, list[int]], dict[str, int]]:
    shapes: dict[str, list[int]] = {}
    types: dict[str, int] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims, et = _static_dims(vi.type)
        types[vi.name] = et
        if dims is not None:
            shapes[vi.name] = dims
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
        types[t.name] = t.data_type
    return shapes, types


def _missing_matrix_shapes(model: Any) -> list[str]:
    shapes, _ = _shape_table(model)
    return [
        n.name or n.output[0]
        for n in model.graph.node
        if n.op_type in MATRIX_OPS and n.output[0] not in shapes
    ]


def _matrix_macs(node: Any, shapes: Mapping[str, list[int]]) -> tuple[int, int] | None:
    """(MACs, extra bias FLOPs) of a matrix op, or None when a needed shape is unknown."""
    op = node.op_type
    out = shapes.get(node.output[0])
    if out is None:
        return None
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv"):
        w = shapes.get(node.input[3] if op == "QLinearConv" else node.input[1])
        if w is None:
            return None
        # out: (N, Cout, *spatial); w: (Cout, Cin/group, *kernel)
        macs = _numel(out) * _numel(w[1:])
        bias_idx = 8 if op == "QLinearConv" else 2
        has_bias = len(node.input) > bias_idx and node.input[bias_idx] != ""
        return macs, (_numel(out) if has_bias else 0)
    if op == "ConvTranspose":
        x = shapes.get(node.input[0])
        w = shapes.get(node.input[1])
        if x is None or w is None:
            return None
        # every input element is scattered through a (Cout/group, *kernel) window.
        macs = _numel(x) * _numel(w[1:])
        has_bias = len(node.input) > 2 and node.input[2] != ""
        return macs, (_numel(out) if has_bias else 0)
    if op in ("MatMul", "MatMulInteger", "FusedMatMul", "QLinearMatMul"):
        a = shapes.get(node.input[0])
        if a is None:
            return None
        k = a[-1]
        if op == "FusedMatMul" and _attr(node, "transA", 0):
            k = a[-2] if len(a) >= 2 else a[-1]
        return _numel(out) * k, 0
    if op in ("Gemm", "FusedGemm"):
        a = shapes.get(node.input[0])
        if a is None:
            return None
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        has_c = len(node.input) > 2 and node.input[2] != ""
        return _numel(out) * k, (_numel(out) if has_c else 0)
    return None


def _other_flops(node: Any, shapes: Mapping[str, list[int]]) -> int | None:
    """Approximate FLOPs of a non-matrix op (one per output element, windows for pooling)."""
    op = node.op_type
    if op in _DATA_MOVEMENT_OPS:
        return 0
    if op in _REDUCE_OPS:
        x = shapes.get(node.input[0])
        return None if x is None else _numel(x)
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return None
    if op in _POOL_OPS:
        k = _attr(node, "kernel_shape", []) or []
        return _numel(out) * _numel(list(k))
    if op == "BatchNormalization":
        return 2 * _numel(out)
    return _numel(out)


def count_model(
    model: str | Path | Any,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ModelCost:
    """Count FLOPs and bytes of `model` (a path or an onnx.ModelProto) at `input_shapes`.

    Dynamic inputs must be given a shape (e.g. `{"images": [1, 3, 960, 1280]}`); the counts are
    for that whole batch. Raises EdgenetError when onnx is missing or the file cannot be read.
    """
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EdgenetError(
            "FLOP counting needs the `onnx` package",
            fix="pip install 'edgenet[bench]' (or pip install onnx)",
        ) from exc

    if isinstance(model, (str, Path)):
        path = str(model)
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a user problem
            raise EdgenetError(
                f"cannot parse ONNX model: {exc}", path=path, fix="check the file"
            ) from exc
    else:
        path = "<in-memory>"
        proto = onnx.ModelProto()
        proto.CopyFrom(model)

    fixed = _fix_inputs(proto, input_shapes or {})
    batches = {dims[0] for dims in fixed.values() if dims}
    batch = next(iter(batches)) if len(batches) == 1 else 1
    if batch <= 1:
        inferred, how = _infer(proto)
    else:
        # A batch > 1 is never run to measure shapes (the full classifier at batch 8 would
        # hold ~11 GB of activations): per-sample networks cost batch x one sample, so when
        # static inference falls short, count one sample (count_model copies PROTO first).
        inferred, how = _static_infer(proto), "onnx"
        if _missing_matrix_shapes(inferred):
            one = count_model(proto, {k: [1, *v[1:]] for k, v in fixed.items()})
            if one.shape_inference == "onnxruntime-run" and not one.unknown_shapes:
                return _times_batch(one, batch, fixed, path)
            inferred, how = _symbolic(proto, inferred)
    shapes, types = _shape_table(inferred)

    init_names = {t.name for t in inferred.graph.initializer}
    weight_bytes = sum(
        _numel(list(t.dims)) * _ELEM_BYTES.get(t.data_type, 4) for t in inferred.graph.initializer
    )
    input_bytes = sum(
        _numel(d) * _ELEM_BYTES.get(types.get(n, 1), 4) for n, d in fixed.items()
    )

    macs = 0
    matrix_flops = 0
    other = 0
    activation_bytes = 0
    by_op: dict[str, OpCost] = {}
    unknown: list[str] = []
    for node in inferred.graph.node:
        oc = by_op.setdefault(node.op_type, OpCost())
        oc.count += 1
        if node.op_type == "Constant":
            # Constants are weights too (some exporters fold initializers into nodes).
            val = _attr(node, "value")
            if val is not None and hasattr(val, "dims"):
                weight_bytes += _numel(list(val.dims)) * _ELEM_BYTES.get(val.data_type, 4)
            continue
        for o in node.output:
            if o and o in shapes and o not in init_names:
                activation_bytes += _numel(shapes[o]) * _ELEM_BYTES.get(types.get(o, 1), 4)
        if node.op_type in MATRIX_OPS:
            r = _matrix_macs(node, shapes)
            if r is None:
                unknown.append(node.name or node.output[0])
                continue
            m, bias = r
            macs += m
            matrix_flops += 2 * m
            other += bias
            oc.flops += 2 * m + bias
        else:
            f = _other_flops(node, shapes)
            if f is None:
                if node.op_type not in ("Shape", "Size"):
                    unknown.append(node.name or node.output[0])
                continue
            other += f
            oc.flops += f

    return ModelCost(
        path=path,
        input_shapes=fixed,
        flops=matrix_flops + other,
        macs=macs,
        matrix_flops=matrix_flops,
        other_flops=other,
        weight_bytes=weight_bytes,
        activation_bytes=activation_bytes,
        input_bytes=input_bytes,
        by_op=by_op,
        unknown_shapes=unknown,
        shape_inference=how,
    )


def _times_batch(one: ModelCost, batch: int, shapes: dict[str, list[int]],
                 path: str) -> ModelCost:
    """A one-sample count scaled to BATCH samples (weights are read once either way)."""
    return ModelCost(
        path=path, input_shapes=shapes, flops=one.flops * batch, macs=one.macs * batch,
        matrix_flops=one.matrix_flops * batch, other_flops=one.other_flops * batch,
        weight_bytes=one.weight_bytes, activation_bytes=one.activation_bytes * batch,
        input_bytes=one.input_bytes * batch,
        by_op={k: OpCost(v.count, v.flops * batch) for k, v in one.by_op.items()},
        unknown_shapes=[], shape_inference=f"onnxruntime-run (1 sample x {batch})",
    )


def input_shape_for(model: str | Path, role: str, batch: int = 1) -> dict[str, list[int]]:
    """The shape each model runs at in SpeciesNet: the detector on a 4:3 camera-trap frame
    (letterboxed to 1280x960), the classifier on one 480x480 NHWC crop."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    init_names = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise EdgenetError(
            f"expected one input, found {len(inputs)}", path=model, fix="pass input shapes"
        )
    if role == "detector":
        shape = [batch, 3, 960, 1280]
    elif role == "classifier":
        shape = [batch, 480, 480, 3]
    else:
        raise ValueError(f"unknown role {role!r}")
    return {inputs[0].name: shape}


def format_cost(name: str, cost: ModelCost) -> str:
    """One human line per model: GFLOPs, GMACs, weights and activations in MB."""
    shape = ", ".join(f"{k}={v}" for k, v in cost.input_shapes.items())
    return (
        f"{name}: {cost.flops / 1e9:.1f} GFLOPs ({cost.macs / 1e9:.1f} GMACs; "
        f"{100 * cost.matrix_flops / max(cost.flops, 1):.1f}% in Conv/MatMul/Gemm) at {shape}; "
        f"weights {cost.weight_bytes / 1e6:.1f} MB, activations {cost.activation_bytes / 1e6:.1f}"
        f" MB written, {cost.arithmetic_intensity:.0f} FLOPs/byte"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edgenet.flops MODEL.onnx ROLE|SHAPE...`: print and JSON-dump the counts."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("model")
    p.add_argument(
        "--role", choices=["detector", "classifier"], help="use SpeciesNet's shape for this role"
    )
    p.add_argument("--shape", help="comma-separated input shape, e.g. 1,3,960,1280")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.shape:
        shapes: dict[str, list[int]] = {"_": [int(x) for x in a.shape.split(",")]}
    elif a.role:
        shapes = input_shape_for(a.model, a.role, a.batch)
    else:
        shapes = {}
    cost = count_model(a.model, shapes)
    if a.json:
        print(json.dumps(cost.to_dict(), indent=2))
    else:
        print(format_cost(Path(a.model).name, cost))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
