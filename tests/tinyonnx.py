"""One-line ONNX models for provider and cache tests, built with onnx.helper (dev dependency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def affine_model(path: Path, weight: np.ndarray, bias: np.ndarray, op: str = "MatMul") -> Path:
    """y = op(x, weight) + bias on an (N, 4) float input; `op` is MatMul (weight 4 x K) or Mul
    (a scalar weight). Writes `path` (and its folder) and returns it."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    width = int(weight.shape[1]) if op == "MatMul" else 4
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=[numpy_helper.from_array(np.asarray(weight, np.float32), "w"),
                     numpy_helper.from_array(np.asarray(bias, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
