"""fp16/int8 variants (converters.quantize) and the variant fidelity measures (converters.fidelity).

Graphs are built with onnx.helper (no torch, no TensorFlow), small enough to run in a second,
but shaped like the real ones: a conv stack with SiLU and a YOLO-like decode head (sigmoid,
grid arithmetic) for the detector, NHWC conv + global pooling + dense for the classifier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from converters import fidelity, quantize  # noqa: E402

RNG = np.random.default_rng(0)


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _conv_silu(x: str, name: str, cin: int, cout: int, k: int, stride: int,
               nodes: list, inits: list) -> str:
    w = RNG.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
    b = RNG.normal(0, 0.1, cout)
    inits += [_init(f"{name}_w", w), _init(f"{name}_b", b)]
    nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                  name=f"{name}_conv", kernel_shape=[k, k],
                                  strides=[stride, stride], pads=[k // 2] * 4))
    nodes.append(helper.make_node("Sigmoid", [f"{name}_c"], [f"{name}_s"], name=f"{name}_sig"))
    nodes.append(helper.make_node("Mul", [f"{name}_c", f"{name}_s"], [f"{name}_y"],
                                  name=f"{name}_mul"))
    return f"{name}_y"


def make_detector(path: Path) -> Path:
    """images (N,3,H,W) -> (N, rows, 8): conv/SiLU body, 1x1 head, sigmoid + grid decode."""
    nodes: list = []
    inits: list = []
    y = _conv_silu("images", "c1", 3, 16, 3, 2, nodes, inits)
    y = _conv_silu(y, "c2", 16, 32, 3, 2, nodes, inits)
    y = _conv_silu(y, "c3", 32, 32, 3, 1, nodes, inits)
    inits += [_init("h_w", RNG.normal(0, 0.2, (8, 32, 1, 1))),
              _init("h_b", np.array([0, 0, 0, 0, -2.0, 1, -1, -2]))]
    nodes.append(helper.make_node("Conv", [y, "h_w", "h_b"], ["h"], name="head_conv",
                                  kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Sigmoid", ["h"], ["hs"], name="head_sig"))
    # (N, 8, h, w) -> (N, h*w, 8)
    inits.append(numpy_helper.from_array(np.array([0, 8, -1], np.int64), "shape3"))
    nodes.append(helper.make_node("Reshape", ["hs", "shape3"], ["hr"], name="head_reshape"))
    nodes.append(helper.make_node("Transpose", ["hr"], ["ht"], name="head_t", perm=[0, 2, 1]))
    # boxes: xy * 64 + 32 px, wh * 100 px; scores unchanged
    inits += [_init("scale", np.array([64, 64, 100, 100, 1, 1, 1, 1])),
              _init("offset", np.array([32, 32, 0, 0, 0, 0, 0, 0]))]
    nodes.append(helper.make_node("Mul", ["ht", "scale"], ["hm"], name="head_scale"))
    nodes.append(helper.make_node("Add", ["hm", "offset"], ["predictions"], name="head_off"))
    graph = helper.make_graph(
        nodes, "det",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["N", "R", 8])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgenet.source_file", "det.pt"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_classifier(path: Path, n_labels: int = 20) -> Path:
    """input (N,480,480,3) NHWC -> logits (N, n_labels)."""
    nodes: list = []
    inits: list = []
    nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], name="to_nchw",
                                  perm=[0, 3, 1, 2]))
    y = _conv_silu("nchw", "k1", 3, 16, 3, 4, nodes, inits)
    y = _conv_silu(y, "k2", 16, 32, 3, 4, nodes, inits)
    nodes.append(helper.make_node("GlobalAveragePool", [y], ["gap"], name="gap"))
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "shape2"))
    nodes.append(helper.make_node("Reshape", ["gap", "shape2"], ["feat"], name="flatten"))
    inits += [_init("fc_w", RNG.normal(0, 1.0, (32, n_labels))),
              _init("fc_b", RNG.normal(0, 0.1, n_labels))]
    nodes.append(helper.make_node("MatMul", ["feat", "fc_w"], ["mm"], name="fc"))
    nodes.append(helper.make_node("Add", ["mm", "fc_b"], ["logits"], name="fc_bias"))
    graph = helper.make_graph(
        nodes, "cls",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 480, 480, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_labels])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return fidelity.synthetic_images(3, size=(240, 320), seed=1)


def test_postprocess_nodes_are_the_decode_head(tmp_path: Path) -> None:
    model = onnx.load(str(make_detector(tmp_path / "d.onnx")))
    post = set(quantize.postprocess_nodes(model))
    assert post == {"head_sig", "head_reshape", "head_t", "head_scale", "head_off"}
    cls = onnx.load(str(make_classifier(tmp_path / "c.onnx")))
    assert quantize.postprocess_nodes(cls) == ["fc_bias"]


def test_output_layers_are_the_last_compute_nodes(tmp_path: Path) -> None:
    assert quantize.output_layer_nodes(onnx.load(str(make_detector(tmp_path / "d.onnx")))) == [
        "head_conv"]
    assert quantize.output_layer_nodes(onnx.load(str(make_classifier(tmp_path / "c.onnx")))) == [
        "fc"]


def test_int8_detector_fuses_into_integer_kernels(tmp_path: Path, images: list) -> None:
    # uint8 activations: onnxruntime's CPU EP turns DQ -> Conv -> Q into QLinearConv (and the
    # SiLU into QLinearSigmoid/QLinearMul). With int8 activations it did not fuse on x86-64
    # and the "int8" model ran float convolutions, slower than fp32 (NOTES.md, entry 6).
    import onnxruntime as ort

    src = make_detector(tmp_path / "d.onnx")
    how = quantize.to_int8(src, tmp_path / "d8.onnx", fidelity.detector_inputs(images, 192))
    assert how["activations"] == "uint8 asymmetric"
    assert how["float_output_layers"] == ["head_conv"]
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "d8.opt.onnx")
    ort.InferenceSession(str(tmp_path / "d8.onnx"), so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "d8.opt.onnx")).graph.node}
    assert "QLinearConv" in ops
    heads = [n for n in onnx.load(str(tmp_path / "d8.onnx")).graph.node if n.name == "head_conv"]
    assert heads and heads[0].op_type == "Conv"  # the output layer stayed float


def test_fp16_keeps_float32_io_and_stays_close(tmp_path: Path, images: list) -> None:
    src = make_detector(tmp_path / "d.onnx")
    how = quantize.to_fp16(src, tmp_path / "d16.onnx")
    assert how["io_types"] == "float32"
    model = onnx.load(str(tmp_path / "d16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgenet.precision"] == "fp16" and meta["edgenet.source_file"] == "det.pt"
    x = fidelity.detector_inputs(images, 256)
    rep = fidelity.compare_detectors(src, tmp_path / "d16.onnx", x)
    assert rep["raw_scores"]["max_abs"] < 5e-3
    assert rep["raw_boxes_px"]["max_abs"] < 0.5
    assert rep["detections_all"]["recall"] >= 0.9


def test_int8_is_qdq_with_float_head_and_close(tmp_path: Path, images: list) -> None:
    src = make_classifier(tmp_path / "c.onnx")
    x = fidelity.classifier_inputs(images)
    how = quantize.to_int8(src, tmp_path / "c8.onnx", [x[i:i + 1] for i in range(len(x))])
    assert how["calibration_samples"] == 3 and how["format"] == "QDQ"
    model = onnx.load(str(tmp_path / "c8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    last = [n for n in model.graph.node if "logits" in n.output][0]
    assert last.op_type == "Add"  # the bias add stayed float
    assert [f for f in tmp_path.iterdir() if "named" in f.name] == []
    rep = fidelity.compare_classifiers(src, tmp_path / "c8.onnx", x)
    assert rep["samples"] == 3
    assert rep["raw"]["max_rel"] < 0.1
    assert rep["top1_in_top5"] == 1.0


def test_int8_detector_runs_on_other_shapes(tmp_path: Path, images: list) -> None:
    src = make_detector(tmp_path / "d.onnx")
    quantize.to_int8(src, tmp_path / "d8.onnx", fidelity.detector_inputs(images, 192))
    x = fidelity.detector_inputs(images, 320)  # calibrated at 192, run at 320
    rep = fidelity.compare_detectors(src, tmp_path / "d8.onnx", x)
    assert rep["input_shapes"][0][2] % 64 == 0
    assert rep["raw_boxes_px"]["max_abs"] < 20


def test_int8_needs_calibration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration"):
        quantize.to_int8(make_classifier(tmp_path / "c.onnx"), tmp_path / "c8.onnx", [])


# ---------------------------------------------------------------------------- fidelity measures


def _raw(boxes: list[tuple[float, float, float, float, float, int]]) -> np.ndarray:
    """yolov5 raw rows (cx, cy, w, h, obj, 3 class scores) from xyxy/conf/class tuples."""
    rows = []
    for x1, y1, x2, y2, conf, cls in boxes:
        scores = [0.0, 0.0, 0.0]
        scores[cls] = 1.0
        rows.append([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, conf, *scores])
    return np.array(rows, np.float32)


def test_detection_agreement_matches_by_iou_and_class() -> None:
    ref = _raw([(10, 10, 110, 110, 0.9, 0), (300, 300, 400, 380, 0.5, 1),
                (600, 50, 700, 150, 0.05, 2)])
    same = fidelity.detection_agreement([ref], [ref.copy()])
    assert same["matched"] == 3 and same["recall"] == 1.0 and same["max_conf_diff"] == 0.0
    moved = ref.copy()
    moved[0, 0] += 80  # first box slides by 80 px: IoU < 0.5
    moved[1, 4] = 0.45  # second loses 0.05 confidence
    moved[2, 5:] = [1, 0, 0]  # third changes class
    rep = fidelity.detection_agreement([ref], [moved])
    assert rep["matched"] == 1 and rep["recall"] == pytest.approx(1 / 3)
    assert rep["max_conf_diff"] == pytest.approx(0.05, abs=1e-6)
    used = fidelity.detection_agreement([ref], [moved], min_conf=0.1)
    assert used["reference_detections"] == 2 and used["matched"] == 1


def test_classification_agreement() -> None:
    ref = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    rep = fidelity.classification_agreement(ref, ref + 0.01)
    assert rep["top1_agreement"] == 1.0 and rep["top5_overlap"] == 1.0
    swapped = ref.copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    rep = fidelity.classification_agreement(ref, swapped)
    assert rep["top1_agreement"] == 0.5 and rep["top1_in_top5"] == 1.0
    assert rep["max_prob_diff"] > 0.1


def test_raw_diff_and_letterbox() -> None:
    d = fidelity.raw_diff(np.array([1.0, -4.0]), np.array([1.5, -4.0]))
    assert d["max_abs"] == 0.5 and d["max_rel"] == pytest.approx(0.125)
    with pytest.raises(ValueError):
        fidelity.raw_diff(np.zeros(2), np.zeros(3))
    lb = fidelity.letterbox(np.zeros((480, 640, 3), np.uint8), 1280)
    assert lb.shape == (960, 1280, 3)
    assert lb[0, 0, 0] == 0  # 960 is a multiple of 64: no padding
    lb = fidelity.letterbox(np.zeros((500, 640, 3), np.uint8), 1280)
    assert lb.shape[0] % 64 == 0 and lb[0, 0, 0] == 114
