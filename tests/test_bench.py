"""`edgenet bench`, FLOP counting, the matmul peak model and the reference comparison logic.

The pack used here is built in the test with onnx.helper: a detector that maps (N, 3, H, W)
to yolov5-shaped raw output (N, rows, 8) and a classifier (N, 480, 480, 3) -> (N, L), so the
whole pipeline (decode, letterbox, detector, NMS, crop, classifier, ensemble) runs in seconds.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgenet import bench, flops, providers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import compare_reference  # noqa: E402

# ------------------------------------------------------------------------------------------
# a tiny pack


def _detector_model() -> onnx.ModelProto:
    """Conv(stride 32) -> sigmoid -> rows of (x, y, w, h, obj, c1, c2, c3) in pixels.

    Near-zero weights and fixed biases: every row is almost the same box (NMS keeps one per
    image) with conf ~ 0.88 * 0.88, so each image gets one animal detection to classify."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 3, 32, 32)) * 1e-4).astype(np.float32)
    b = np.array([0, 0, 0, 0, 2, 2, -2, -2], np.float32)
    scale = np.array([640, 480, 400, 300, 1, 1, 1, 1], np.float32)
    nodes = [
        helper.make_node("Conv", ["images", "W", "B"], ["c"], strides=[32, 32],
                         kernel_shape=[32, 32]),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Reshape", ["s", "shape3"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Mul", ["t", "scale"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", "rows", 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
         numpy_helper.from_array(np.array([0, 8, -1], np.int64), "shape3"),
         numpy_helper.from_array(scale, "scale")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _classifier_model(n_labels: int) -> onnx.ModelProto:
    """NHWC -> Conv(stride 32) -> global average -> Gemm to the labels."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "W"], ["c"], strides=[32, 32], kernel_shape=[32, 32]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "G", "GB"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 480, 480, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", n_labels])],
        [numpy_helper.from_array((rng.standard_normal((4, 3, 32, 32)) * 0.01)
                                 .astype(np.float32), "W"),
         numpy_helper.from_array((rng.standard_normal((n_labels, 4)) * 3).astype(np.float32),
                                 "G"),
         numpy_helper.from_array(np.zeros(n_labels, np.float32), "GB")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def make_tiny_pack(dst: Path, variant_fidelity: dict | None = None) -> Path:
    """A complete pack (labels/taxonomy/geofence generated) in DST; an "int8" variant entry
    pointing at the same graphs carries `variant_fidelity` in the pack's fidelity.json."""
    from converters.synth import generate_labels, make_geofence

    dst.mkdir(parents=True, exist_ok=True)
    labels, taxonomy = generate_labels(40, seed=3)
    onnx.save(_detector_model(), dst / "det.onnx")
    onnx.save(_classifier_model(len(labels)), dst / "cls.onnx")
    (dst / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    (dst / "taxonomy.txt").write_text("\n".join(taxonomy) + "\n", encoding="utf-8")
    (dst / "geofence.json").write_text(json.dumps(make_geofence(labels, 0, 10)),
                                       encoding="utf-8")
    fid = {"detector": {"fp32": {}}, "classifier": {"fp32": {}}}
    variants = {}
    if variant_fidelity is not None:
        variants["int8"] = {"detector": "det.onnx", "classifier": "cls.onnx"}
        fid["detector"]["int8"] = variant_fidelity["detector"]
        fid["classifier"]["int8"] = variant_fidelity["classifier"]
    (dst / "fidelity.json").write_text(json.dumps(fid), encoding="utf-8")
    info = {
        "version": "4.0.2a-test-tiny", "type": "always_crop", "classifier": "cls.onnx",
        "classifier_labels": "labels.txt", "detector": "det.onnx", "taxonomy": "taxonomy.txt",
        "geofence": "geofence.json",
        "edgenet": {"format": 1, "precision": "fp32", "synthetic": True, "variants": variants,
                    "fidelity": "fidelity.json"},
    }
    (dst / "info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return dst


FIDELITY = {
    "detector": {"detections_used": {"recall": 0.97, "precision": 0.95, "max_conf_diff": 0.02}},
    "classifier": {"top1_agreement": 0.93, "top5_overlap": 0.88},
}


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pack(tmp_path_factory.mktemp("pack") / "tiny", FIDELITY)


# ------------------------------------------------------------------------------------------
# flops


def _hand_graph() -> onnx.ModelProto:
    """Conv(3->4, 3x3, pad 1, bias) -> Relu -> Reshape via Shape (as exporters write it)
    -> MatMul(256 -> 10) -> Gemm(10 -> 6, transB, bias), with a dynamic batch."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Shape", ["r"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["r", "newshape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "M"], ["m"]),
        helper.make_node("Gemm", ["m", "G", "GB"], ["y"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(np.zeros(4, np.float32), "B"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "M"),
        numpy_helper.from_array(rng.standard_normal((6, 10)).astype(np.float32), "G"),
        numpy_helper.from_array(np.zeros(6, np.float32), "GB"),
    ]
    graph = helper.make_graph(
        nodes, "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("batch", [1, 3])
def test_flops_of_hand_made_graph(batch: int) -> None:
    cost = flops.count_model(_hand_graph(), {"x": [batch, 3, 8, 8]})
    conv_macs = batch * 4 * 8 * 8 * (3 * 3 * 3)  # out elements x (Cin/g * kH * kW)
    matmul_macs = batch * 10 * 256
    gemm_macs = batch * 6 * 10
    assert not cost.unknown_shapes
    assert cost.macs == conv_macs + matmul_macs + gemm_macs
    assert cost.matrix_flops == 2 * cost.macs
    # minor ops: conv bias add, relu, gemm bias add (one FLOP per output element each)
    assert cost.other_flops == batch * 4 * 64 + batch * 4 * 64 + batch * 6
    assert cost.flops == cost.matrix_flops + cost.other_flops
    assert cost.by_op["Conv"].flops == 2 * conv_macs + batch * 4 * 64
    # weights: every float32/int64 initializer
    assert cost.weight_bytes == 4 * (108 + 4 + 2560 + 60 + 6) + 8 * 3
    assert cost.input_bytes == batch * 3 * 64 * 4


@pytest.mark.parametrize("batch", [1, 4])
def test_flops_when_static_inference_loses_shapes(batch: int) -> None:
    """tf2onnx's "SAME" padding is Pad(x, Cast(computed pads)): static inference loses every
    shape after it; the counter then measures them by running the graph (one sample)."""
    pads_f = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.float32), "pads_f")
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    nodes = [
        helper.make_node("Relu", ["pads_f"], ["pads_r"]),  # computed, not a constant
        helper.make_node("Cast", ["pads_r"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["xp"], mode="constant"),
        helper.make_node("Conv", ["xp", "W"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "same_pad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], [pads_f, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cost = flops.count_model(model, {"x": [batch, 3, 8, 8]})
    assert cost.shape_inference.startswith("onnxruntime-run")
    assert not cost.unknown_shapes
    assert cost.macs == batch * 4 * 8 * 8 * 27


def test_flops_of_int8_qdq_graph() -> None:
    """An int8 pack's graph (QDQ: int8 weights through DequantizeLinear) counts the same MACs;
    its weights count one byte per int8 element."""
    c, hw = 8, 6
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(np.int8(0)), "zp"),
        numpy_helper.from_array(np.ones((c, c, 3, 3), np.int8), "wq"),
        numpy_helper.from_array(np.full((c,), 0.001, np.float32), "ws"),
        numpy_helper.from_array(np.zeros((c,), np.int8), "wzp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "s", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["Y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, c, hw, hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cost = flops.count_model(model)
    assert cost.macs == c * hw * hw * c * 9
    assert cost.weight_bytes == 4 + 1 + c * c * 9 + 4 * c + c


def test_flops_of_file_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "hand.onnx"
    onnx.save(_hand_graph(), path)
    cost = flops.count_model(path, {"x": [2, 3, 8, 8]})
    assert cost.path == str(path) and cost.macs == 2 * (4 * 64 * 27 + 2560 + 60)
    assert "GFLOPs" in flops.format_cost("hand", cost)
    with pytest.raises(flops.EdgenetError, match="dynamic"):
        flops.count_model(path)  # batch is dynamic and no shape was given
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(flops.EdgenetError, match="cannot parse"):
        flops.count_model(bad)


def test_flops_of_detector_and_classifier_shapes(tiny_pack: Path) -> None:
    det = flops.count_model(tiny_pack / "det.onnx",
                            flops.input_shape_for(tiny_pack / "det.onnx", "detector"))
    assert det.input_shapes == {"images": [1, 3, 960, 1280]}
    assert det.macs == 8 * 30 * 40 * (3 * 32 * 32)
    cls = flops.count_model(tiny_pack / "cls.onnx",
                            flops.input_shape_for(tiny_pack / "cls.onnx", "classifier"))
    assert cls.macs == 4 * 15 * 15 * 3 * 32 * 32 + 4 * 40


# ------------------------------------------------------------------------------------------
# the peak model


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_handwritten_matmul_model_computes_a_matmul(kind: str) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(bench.matmul_model_bytes(48, kind),
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = rng.standard_normal((48, 48), dtype=np.float32)
        b = rng.standard_normal((48, 48), dtype=np.float32)
        np.testing.assert_allclose(sess.run(None, {"A": a, "B": b})[0], a @ b, rtol=1e-4,
                                   atol=1e-4)
    else:
        a = rng.integers(0, 255, (48, 48), dtype=np.uint8)
        b = rng.integers(-127, 127, (48, 48), dtype=np.int8)
        out = sess.run(None, {"A": a, "B": b})[0]
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, a.astype(np.int32) @ b.astype(np.int32))


def test_handwritten_conv_model_computes_a_conv() -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 3, 3), dtype=np.float32)
    x = rng.standard_normal((1, 4, 5, 6), dtype=np.float32)
    sess = ort.InferenceSession(bench.conv_model_bytes(w, 5, 6),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {"X": x})[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 4, 5, 6), np.float32)
    for i in range(5):
        for j in range(6):
            want[0, :, i, j] = np.einsum("ocij,cij->o", w, xp[0, :, i:i + 3, j:j + 3])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["fp32", "int8", "conv"])
def test_measure_peak_reports_positive_rates(kind: str) -> None:
    res = bench.measure_matmul_peak(threads=1, n=128, repeats=2, kind=kind)
    assert res["best_gflops"] >= res["median_gflops"] > 0 and res["kind"] == kind
    assert res["n"] == 128 and res["threads"] == 1


# ------------------------------------------------------------------------------------------
# bench end to end


def test_bench_writes_json_markdown_and_png(tiny_pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = bench.bench(tiny_pack, None, "cpu", "fp32,int8", "2", threads=1, out=out,
                         num_images=2, peak=False, flops=True, quiet=True)
    files = {p.name for p in out.iterdir()}
    assert {"bench.json", "bench.md", "bench.png"} <= files
    saved = json.loads((out / "bench.json").read_text())
    assert saved["cells"] == json.loads(json.dumps(report["cells"], default=str))
    cells = saved["cells"]
    assert [(c["precision"], c["batch_size"]) for c in cells] == [("fp32", 2), ("int8", 2)]
    for c in cells:
        assert c["ok"], c.get("error")
        assert c["images"] == 2 and c["predictions"] == 2 and c["failures"] == 0
        assert c["detections"] >= 2  # the tiny detector finds one box per image
        assert c["images_per_s"] > 0
        st = c["stage_ms_per_image"]
        assert st["decode_letterbox"] > 0 and st["detector"] > 0 and st["classifier"] > 0
        assert c["self_peak_rss_mb"] > 10
        # Memory at the end of loading: below the cell's own peak, which comes later or then.
        assert 10 < c["rss_after_load_mb"] <= c["load_peak_rss_mb"] <= c["self_peak_rss_mb"]
        assert c["first_image_s"] > 0
        assert "classifier_alone" not in c  # crops were classified in the pipeline
    assert cells[1]["fidelity"] == "det R/P 0.97/0.95, top1 0.93, top5 0.88"
    assert cells[0]["fidelity"] == "reference (fp32)"
    assert saved["costs"]["detector"]["input_shapes"] == {"images": [1, 3, 960, 1280]}
    assert saved["machine"]["onnxruntime"]
    md = (out / "bench.md").read_text()
    assert "| device | precision | batch | images/s" in md
    assert md.count("| cpu | ") == 2 and "top1 0.93" in md
    # the chart shows the stages: each stage's colour is painted somewhere
    from PIL import Image

    with Image.open(out / "bench.png") as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert bench.STAGE_COLOURS["detector"] in colours or _near(colours, "detector")
    assert _near(colours, "classifier") and _near(colours, "decode_letterbox")

    # --compare: the same report compared with a copy twice as slow -> 2.00x
    slow = copy.deepcopy(saved)
    for c in slow["cells"]:
        c["images_per_s"] /= 2
        c["stage_ms_per_image"] = {k: v * 2 for k, v in c["stage_ms_per_image"].items()}
    old = tmp_path / "old.json"
    old.write_text(json.dumps(slow))
    text = bench.compare_reports(saved, [old])
    assert text.count("| 2.00x |") == 2
    assert "| 0.50 |" in text


def _near(colours: set, stage: str, tol: int = 12) -> bool:
    ref = np.array(bench.STAGE_COLOURS[stage])
    return any(np.abs(np.array(c) - ref).max() <= tol for c in colours)


def test_pil_chart_renderer_draws_each_stage(tmp_path: Path) -> None:
    rows = [("cpu fp32 b1", {s: 10.0 * (i + 1) for i, s in enumerate(bench.STAGES)}),
            ("cpu int8 b1", {s: 5.0 for s in bench.STAGES})]
    path = tmp_path / "c.png"
    bench.render_chart_pil(rows, path)
    from PIL import Image

    with Image.open(path) as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    for s in bench.STAGES:
        assert bench.STAGE_COLOURS[s] in colours, s


def test_bench_cli_errors(tiny_pack: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    app = bench.bench_app()
    r = CliRunner().invoke(app, ["--model", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "info.json" in r.output
    r = CliRunner().invoke(app, ["--model", str(tiny_pack), "--batch-sizes", "x",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "batch-sizes" in r.output
    r = CliRunner().invoke(app, ["--model", str(tiny_pack), "--precisions", "fp8",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "fp8" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = CliRunner().invoke(app, ["--model", str(tiny_pack), "--compare", str(bad),
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not an edgenet bench report" in r.output
    assert not (tmp_path / "o" / "bench.json").exists()  # refused before any run


def test_bench_without_model_uses_the_demo_pack_on_a_fresh_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from edgenet.demo import demo_pack_dir

    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "empty-home"))  # nothing installed
    assert bench.default_bench_pack()[0] == demo_pack_dir()
    out = tmp_path / "o"
    r = CliRunner().invoke(bench.bench_app(), ["--out", str(out), "--num-images", "2",
                                                "--no-peak", "--no-flops", "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "bench.json").read_text())
    assert Path(report["pack"]["path"]).resolve() == demo_pack_dir().resolve()
    assert report["cells"][0]["ok"] and (out / "bench.png").is_file()
    # The synthetic demo detector finds nothing to classify on generated frames, so the
    # pipeline's classifier stage stays at zero; the classifier is then timed alone, and the
    # Markdown and the chart show it.
    cell = report["cells"][0]
    assert cell["counts"]["crops"] == 0 and cell["stage_ms_per_image"]["classifier"] == 0
    alone = cell["classifier_alone"]
    assert alone["ms_per_crop"] > 0 and alone["batch"] == 1
    assert alone["crop_shape"] == [480, 480, 3]
    assert "the classifier alone took" in (out / "bench.md").read_text()
    from PIL import Image

    with Image.open(out / "bench.png") as im:
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert _near(colours, "classifier")


def test_missing_variant_is_a_failed_cell_not_a_crash(tmp_path: Path) -> None:
    pack = make_tiny_pack(tmp_path / "p")
    report = bench.bench(pack, None, "cpu", "fp16", "1", threads=1, out=tmp_path / "o",
                         num_images=1, peak=False, flops=False, quiet=True)
    (cell,) = report["cells"]
    assert not cell["ok"] and "no fp16 variant" in cell["error"]


def test_bf16_cell_without_openvino_fails_with_edgenet_s_reason(tmp_path: Path) -> None:
    """bf16 needs no variant files (the fp32 graphs computed in bf16), but OpenVINO: here
    (onnxruntime's CPU build) the cell fails with the fix, and the run goes on."""
    if providers.available_devices()["openvino"]:
        pytest.skip("OpenVINO provider really present here")
    pack = make_tiny_pack(tmp_path / "p")
    report = bench.bench(pack, None, "cpu", "bf16,fp32", "1", threads=1, out=tmp_path / "o",
                         num_images=1, peak=False, flops=False, quiet=True)
    bf16, fp32 = report["cells"]
    assert not bf16["ok"] and "OpenVINO" in bf16["error"] and "variant" not in bf16["error"]
    assert "not measured at conversion" in bf16["fidelity"]
    assert fp32["ok"]
    rows = [ln for ln in (tmp_path / "o" / "bench.md").read_text().splitlines()
            if ln.startswith("| cpu |")]
    assert len(rows) == 2 and "OpenVINO" in rows[0] and rows[0].endswith("|")


def test_generated_images_are_camera_trap_sized(tmp_path: Path) -> None:
    paths = bench.generate_images(tmp_path, count=4)
    from PIL import Image

    sizes = []
    for p in paths:
        with Image.open(p) as im:
            sizes.append(im.size)
            assert im.mode == "RGB" and im.format == "JPEG"
    assert sizes == list(bench.frames.SYNTH_SIZES[:4])
    assert paths == sorted(paths)


# ------------------------------------------------------------------------------------------
# the reference comparison logic (benchmarks/compare_reference.py)


def _pred(fp: str, conf: float = 0.9, bbox=(0.1, 0.2, 0.3, 0.4), score: float = 0.8,
          source: str = "classifier") -> dict:
    """A prediction in speciesnet 5.0.6's shape (one classified detection)."""
    return {
        "filepath": fp,
        "country": "KEN",
        "detections": [{
            "category": "1", "label": "animal", "conf": conf, "bbox": list(bbox),
            "raw_classifications": {"classes": ["a;b", "c;d"], "scores": [score, 0.1]},
            "processed_classification": {"class": "a;b", "score": score, "source": source},
        }],
        "model_version": "x",
    }


def test_compare_predictions_identical_and_within_tolerance() -> None:
    ref = {"predictions": [_pred("a.jpg"), _pred("b.jpg")]}
    ours = {"predictions": [_pred("b.jpg", conf=0.9004), _pred("a.jpg", bbox=(0.1, 0.2, 0.3,
                                                                             0.4009))]}
    res = compare_reference.compare_predictions(ref, ours)
    assert res["images"] == 2 and res["mismatched_images"] == 0, res["problems"]


def test_compare_predictions_finds_each_kind_of_difference() -> None:
    ref = {"predictions": [_pred("a.jpg"), _pred("b.jpg"), _pred("c.jpg"),
                           {"filepath": "d.jpg", "failures": ["DETECTOR"]}, _pred("e.jpg")]}
    b = _pred("b.jpg", source="classifier+rollup_to_genus")
    c = _pred("c.jpg", score=0.802)
    d = _pred("d.jpg")
    ours = {"predictions": [_pred("a.jpg", bbox=(0.1, 0.2, 0.3, 0.402)), b, c, d]}
    res = compare_reference.compare_predictions(ref, ours)
    probs = "\n".join(res["problems"])
    assert res["mismatched_images"] == 5
    assert "a.jpg" in probs and "bbox" in probs
    assert "b.jpg" in probs and "source" in probs
    assert "c.jpg" in probs and "score" in probs
    assert "d.jpg" in probs and "failures" in probs
    assert "e.jpg" in probs and "missing" in probs


def test_compare_predictions_pairs_near_tied_detections_in_either_order() -> None:
    """Two detections whose confs differ by less than 1e-3 may come in either order."""
    ref = _pred("a.jpg", conf=0.5)
    second = dict(ref["detections"][0], conf=0.4996, bbox=[0.5, 0.5, 0.2, 0.2])
    ref["detections"].append(second)
    ours = json.loads(json.dumps(ref))
    ours["detections"].reverse()
    ours["detections"][0]["conf"] = 0.4998  # the second one now sorts first
    res = compare_reference.compare_predictions({"predictions": [ref]}, {"predictions": [ours]})
    assert res["mismatched_images"] == 0, res["problems"]
    pairs, swaps = compare_reference.pair_detections(ref["detections"], ours["detections"])
    assert pairs == [1, 0] and swaps == 2
    # A far-apart conf is a real difference, not a tie: no pairing rescues it.
    ours["detections"][0]["conf"] = 0.45
    res = compare_reference.compare_predictions({"predictions": [ref]}, {"predictions": [ours]})
    assert res["mismatched_images"] == 1


def test_prediction_agreement_matches_detections_and_top1() -> None:
    """bf16's (or another runtime's) fidelity column: detections at conf >= 0.1 matched by
    category and IoU, then the classifier's top-1 over the matched pairs."""
    base = _pred("a.jpg")
    base["detections"].append(dict(base["detections"][0], conf=0.5, bbox=[0.6, 0.6, 0.2, 0.2]))
    base["detections"].append(dict(base["detections"][0], conf=0.05, bbox=[0.0, 0.0, 0.1, 0.1]))
    test = json.loads(json.dumps(base))
    res = compare_reference.prediction_agreement({"predictions": [base]}, {"predictions": [test]})
    assert (res["recall"], res["precision"], res["top1_agreement"]) == (1.0, 1.0, 1.0)
    assert res["base_detections"] == 2  # the 0.05 one is below the classification threshold
    test["detections"][0]["bbox"] = [0.12, 0.21, 0.3, 0.4]  # moved a little: still a match
    test["detections"][0]["raw_classifications"]["classes"] = ["c;d", "a;b"]  # top-1 changed
    test["detections"][1]["category"] = "2"  # same box, another category: no match
    test["detections"].append(dict(base["detections"][0], conf=0.3, bbox=[0.0, 0.7, 0.1, 0.1]))
    res = compare_reference.prediction_agreement({"predictions": [base]}, {"predictions": [test]})
    assert res["matched"] == 1 and res["recall"] == 0.5 and res["precision"] == 1 / 3
    assert res["classified_pairs"] == 1 and res["top1_agreement"] == 0.0
    assert res["processed_agreement"] == 1.0  # the ensemble's class is still "a;b"
    assert res["text"].startswith("det R/P 0.50/0.33, top1 0.00")


def test_target_lines_judge_each_row_from_the_run() -> None:
    ref = {"name": "speciesnet 5.0.6 (PyTorch)", "returncode": 0, "images_per_s": 0.1,
           "cold_start_s": 30.0, "env_bytes": 6000, "peak_rss_mb": 4000}
    fp32 = {"name": "edgenet fp32", "precision": "fp32", "returncode": 0, "images_per_s": 0.2,
            "cold_start_s": 10.9, "env_bytes": 345, "peak_rss_mb": 1500,
            "agreement": "identical (within 1e-3)"}
    int8 = {"name": "edgenet int8", "returncode": 0, "images_per_s": 0.24, "cold_start_s": 7.0,
            "env_bytes": 700, "peak_rss_mb": 800, "agreement": "14/14 images differ"}
    differs = dict(fp32, name="edgenet fp32 (other)", agreement="1/14 images differ")
    lines = compare_reference.target_lines({"rows": [ref, fp32, int8, differs]})
    assert lines[0].startswith("Targets (issue 4)")
    assert lines[1] == ("- edgenet fp32: speed 2.00x (>= 1.3x, identical predictions): met; "
                        "cold start 0.36x (<= 0.33x): **not met**; installed 0.058x (<= 0.1x): "
                        "met; peak RSS 0.38x (<= 1x): met.")
    assert "speed 2.40x (>= 2.5x): **not met**" in lines[2]  # int8 from its name
    assert "installed 0.117x (<= 0.1x): **not met**" in lines[2]
    assert "speed 2.00x (>= 1.3x, identical predictions): **not met**" in lines[3]
    on_gpu = compare_reference.target_lines({"rows": [ref, fp32], "machine": {"gpus": [{}]}})
    assert on_gpu[0].startswith("Targets (issue 4, on a GPU)")
    assert "speed 2.00x (>= 10x): **not met**" in on_gpu[1]
    assert compare_reference.target_lines({"rows": [fp32]}) == []  # no reference row


def test_runtime_environment_size_counts_only_runtime_distributions() -> None:
    size = compare_reference.runtime_env_size(sys.executable)
    names = {d.lower().replace("_", "-") for d in size["distributions"]}
    assert {"onnxruntime", "numpy", "pillow", "typer"} <= names
    assert not names & {"torch", "tensorflow", "onnx", "pytest"}
    assert size["bytes"] > 10 * 2**20


def test_runtime_environment_size_counts_an_onnxruntime_flavour(tmp_path: Path) -> None:
    """An OpenVINO (or GPU) venv has `onnxruntime-openvino` where edgenet requires
    `onnxruntime`: the flavour's bytes count for the requirement (the OpenVINO rows' column)."""
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "v")
    python = tmp_path / "v" / "bin" / "python"
    if not python.exists():  # Windows layout
        python = tmp_path / "v" / "Scripts" / "python.exe"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"  # the venv's own
    site = Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                               check=True).stdout.strip())

    def dist(name: str, requires: list[str], payload: int) -> None:
        info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        pkg = site / name.replace("-", "_")
        pkg.mkdir()
        (pkg / "blob.bin").write_bytes(b"x" * payload)
        meta = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
        (info / "METADATA").write_text("\n".join(meta + [f"Requires-Dist: {r}" for r in requires])
                                      + "\n")
        (info / "RECORD").write_text(f"{pkg.name}/blob.bin,,{payload}\n")

    dist("fakeapp", ["onnxruntime>=1.17", "numpy-missing"], 1000)
    dist("onnxruntime-openvino", [], 50_000)
    size = compare_reference.runtime_env_size(str(python), root="fakeapp")
    assert set(size["distributions"]) == {"fakeapp", "onnxruntime-openvino"}
    assert size["bytes"] == 51_000


def test_bench_without_onnx_or_matplotlib(tiny_pack: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain install has neither: FLOPs are left out, the chart falls back to PIL."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    costs = bench.pack_costs(tiny_pack)
    assert costs == {}  # no error either: FLOPs are simply not reported
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report = {"machine": {"cpu": "x", "onnxruntime": "1"}, "cells": [
        {"ok": True, "device": "cpu", "precision": "fp32", "batch_size": 1,
         "stage_ms_per_image": {s: 10.0 for s in bench.STAGES}}]}
    assert bench.render_chart(report, tmp_path / "c.png") == "pil"
    assert (tmp_path / "c.png").stat().st_size > 0


def test_make_instances_keeps_local_images_only(speciesnet_images: Path, tmp_path: Path) -> None:
    path = compare_reference.make_instances(speciesnet_images, tmp_path / "i.json")
    inst = json.loads(path.read_text())["instances"]
    both = compare_reference.make_instances([speciesnet_images, speciesnet_images],
                                            tmp_path / "b.json")
    assert json.loads(both.read_text())["instances"] == inst + inst
    assert inst and all(Path(i["filepath"]).is_file() for i in inst)
    assert not any("://" in i["filepath"] for i in inst)
    one = compare_reference.make_instances(speciesnet_images, tmp_path / "o.json", limit=1)
    assert json.loads(one.read_text())["instances"] == inst[:1]


def test_run_measured_sees_peak_memory_and_exit_code() -> None:
    code = "import time; b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096]); " \
           "time.sleep(0.5); raise SystemExit(3)"
    res = compare_reference.run_measured([sys.executable, "-c", code])
    assert res["returncode"] == 3
    peaks = [v for v in (res["peak_rss_tree_mb"], res["peak_rss_wait4_mb"]) if v]
    assert peaks and max(peaks) >= 150
    assert res["wall_s"] >= 0.5


def test_cold_start_is_the_median_of_runs_that_did_the_work(tmp_path: Path) -> None:
    """Each one-image run starts without the output (so it does the work), failed runs do not
    count, and the reported time is the median of the others."""
    out = tmp_path / "one.json"
    marker = tmp_path / "runs"
    code = ("import pathlib, sys, time; out = pathlib.Path(sys.argv[1]); "
            "runs = pathlib.Path(sys.argv[2]); n = len(runs.read_text()) if runs.exists() else 0; "
            "runs.write_text('x' * (n + 1)); assert not out.exists(), 'output left over'; "
            "time.sleep([0.3, 0.1, 0.2, 0.0][n]); sys.exit(3) if n == 3 else out.write_text('{}')")
    res = compare_reference.cold_start(
        lambda o: [sys.executable, "-c", code, str(o), str(marker)], out, {**os.environ}, runs=4)
    walls = res["cold_start_runs_s"]
    assert len(walls) == 4 and walls[3] is None and all(w is not None for w in walls[:3])
    assert res["cold_start_s"] == sorted(walls[:3])[1]
    assert 0.2 <= res["cold_start_s"] < walls[0]


def test_prime_runs_once_unmeasured_and_leaves_no_output(tmp_path: Path) -> None:
    """The unmeasured first run before a whole run: its wall time back, its output removed
    (so the cold starts later still do the work), None when it fails."""
    out = tmp_path / "prime.json"
    out.write_text("stale")
    code = ("import pathlib, sys; out = pathlib.Path(sys.argv[1]); "
            "assert not out.exists(), 'stale output'; out.write_text('{}'); "
            "sys.exit(int(sys.argv[2]))")
    wall = compare_reference.prime(lambda o: [sys.executable, "-c", code, str(o), "0"], out,
                                   {**os.environ})
    assert wall is not None and wall > 0 and not out.exists()
    assert compare_reference.prime(lambda o: [sys.executable, "-c", code, str(o), "4"], out,
                                   {**os.environ}) is None


def test_cold_starts_take_turns(tmp_path: Path) -> None:
    """The tools' one-image runs alternate (A B, B A, A B), so a slow spell of the machine
    does not fall on one tool's cold starts only; each job keeps its own runs and median."""
    log = tmp_path / "order"
    code = ("import pathlib, sys; out = pathlib.Path(sys.argv[1]); "
            "log = pathlib.Path(sys.argv[2]); "
            "log.write_text((log.read_text() if log.exists() else '') + sys.argv[3]); "
            "out.write_text('{}')")

    def job(name: str) -> tuple:
        return (lambda o: [sys.executable, "-c", code, str(o), str(log), name],
                tmp_path / f"{name}.json")

    res = compare_reference.cold_starts([job("A"), job("B")], {**os.environ}, runs=3)
    assert log.read_text() == "ABBAAB"
    assert [len(r["cold_start_runs_s"]) for r in res] == [3, 3]
    assert all(r["cold_start_s"] == sorted(r["cold_start_runs_s"])[1] for r in res)


def test_compile_bytecode_writes_pyc_even_where_python_would_not(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The side-by-side script compiles edgenet's modules as `pip install` does, also where
    PYTHONDONTWRITEBYTECODE stops a normal import from writing them."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "mod.py").write_text("def f():\n    return 2\n")
    assert compare_reference.compile_bytecode(pkg)
    assert {p.name.split(".")[0] for p in (pkg / "__pycache__").glob("*.pyc")} == {"__init__",
                                                                                  "mod"}
    (pkg / "bad.py").write_text("def (:\n")
    assert not compare_reference.compile_bytecode(pkg)


def test_tree_monitor_sums_children_started_later() -> None:
    """The poller re-lists the tree every `children_every` s: a child that starts after the
    first listing and holds 120 MB is summed with its parent's (~60 MB) RSS."""
    pytest.importorskip("psutil")
    from edgenet.bench.cell import TreeMonitor

    child = ("import time; b = bytearray(120 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
             "time.sleep(1.5)")
    parent = ("import subprocess, sys, time; b = bytearray(60 * 2**20); "
              "b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5); "
              f"subprocess.run([sys.executable, '-c', {child!r}])")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    with TreeMonitor(proc.pid, interval=0.05, children_every=0.3) as mon:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert mon.peak_rss_mb is not None and mon.peak_rss_mb >= 180


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.convert
def test_side_by_side_on_tiny_synthetic_weights(ref_python: Path, speciesnet_images: Path,
                                                tmp_path: Path) -> None:
    """The whole benchmarks/compare_reference.py on `--size tiny` weights: both tools run,
    every number of the table is measured, and edgenet fp32 predicts what speciesnet does."""
    rc = compare_reference.main(["--size", "tiny", "--work", str(tmp_path), "--precisions",
                                 "fp32", "--reference-python", str(ref_python),
                                 "--images", str(speciesnet_images)])
    assert (tmp_path / "compare.json").is_file(), "preparation failed: see the captured stderr"
    result = json.loads((tmp_path / "compare.json").read_text())
    ref_row, ours = result["rows"]
    assert rc == 0, [r.get("error") for r in result["rows"]]
    for row in (ref_row, ours):
        assert row["images_per_s"] > 0 and row["cold_start_s"] > 0
        assert row["peak_rss_mb"] > 50 and row["env_bytes"] > 10 * 2**20
    cmp = ours["comparison"]
    assert cmp["images"] == 14 and cmp["mismatched_images"] == 0, cmp["problems"][:20]
    assert "| edgenet fp32 |" in (tmp_path / "compare.md").read_text()


def test_gpu_staging_reassembles_files_across_parts(tmp_path, monkeypatch) -> None:
    """benchmarks/gpu_device.py: files cut into parts arrive in order and come out whole,
    sha256-checked; a part out of order is refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_device", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_device.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    monkeypatch.setattr(gpu, "ROOT", tmp_path / "device")
    monkeypatch.setattr(gpu, "PARTS", tmp_path / "parts")
    files = [("a.bin", bytes(range(256)) * 40), ("b.bin", b"x" * 5000), ("c.bin", b"yz" * 3)]
    parts = gpu.write_parts(files, tmp_path / "parts", 4096)
    assert parts == 4
    with pytest.raises(SystemExit, match="order"):
        gpu.receive(2)
    for k in range(1, parts + 1):
        gpu.receive(k)
    for name, data in files:
        assert (tmp_path / "device" / "files" / name).read_bytes() == data


def test_render_table_steady_rate_from_the_cold_run() -> None:
    """images/s after start-up = (n - 1) / (wall - cold); its ratio is to speciesnet's."""
    rows = [{"name": "speciesnet 5.0.6 (PyTorch)", "wall_s": 51.0, "cold_start_s": 16.0,
             "images_per_s": 101 / 51.0, "returncode": 0},
            {"name": "edgenet fp32", "wall_s": 15.0, "cold_start_s": 10.0,
             "images_per_s": 101 / 15.0, "returncode": 0},
            {"name": "edgenet fp16", "wall_s": 9.0, "cold_start_s": None,
             "images_per_s": 101 / 9.0, "returncode": 0}]
    result = {"images": 101, "images_dir": "x", "size": "full", "created": "now",
              "machine": {"cpu": "c", "logical_cores": 2}, "rows": rows}
    table = compare_reference.render_table(result)
    header, _, ref, fp32, fp16 = table.splitlines()[2:7]
    assert "images/s after start-up" in header
    assert "| 2.857 | 1.00x |" in ref  # 100 / 35
    assert "| 20.000 | 7.00x |" in fp32  # 100 / 5
    assert "| - | - |" in fp16  # no cold run: no steady rate
    rows[0]["cold_start_s"] = rows[1]["cold_start_s"] = None
    assert "after start-up" not in compare_reference.render_table(result)


def test_steal_share_from_cpu_counters_and_in_the_table() -> None:
    """Steal = the hypervisor's share of all CPU time between two readings; the table names
    each tool's share for its whole run and each one-image run, and the machine's measured
    Conv rate before each whole run."""
    before = [100, 0, 50, 800, 0, 0, 0, 50]
    after = [300, 0, 100, 1350, 0, 0, 0, 150]  # 900 ticks in all, 100 of them stolen
    assert compare_reference.steal_pct(before, after) == pytest.approx(100 / 9)
    assert compare_reference.steal_pct(None, after) is None
    assert compare_reference.steal_pct(before, before) is None
    if Path("/proc/stat").is_file():
        run = compare_reference.run_measured([sys.executable, "-c", "pass"])
        assert 0.0 <= run["cpu_steal_pct"] <= 100.0
    rows = [{"name": "speciesnet 5.0.6 (PyTorch)", "wall_s": 5.0, "images_per_s": 1.0,
             "returncode": 0, "cpu_steal_pct": 12.5, "cold_start_steal_pct": [1.0, None]},
            {"name": "edgenet fp32", "wall_s": 2.0, "images_per_s": 2.5, "returncode": 0,
             "cpu_steal_pct": 0.0}]
    result = {"images": 5, "images_dir": "x", "size": "tiny", "created": "now",
              "machine": {"cpu": "c", "logical_cores": 2}, "rows": rows}
    table = compare_reference.render_table(result).splitlines()
    (steal,) = [ln for ln in table if ln.startswith("CPU time the hypervisor gave")]
    assert "speciesnet 5.0.6 (PyTorch) 12.5% (1.0%, -); edgenet fp32 0.0%." in steal
    assert table[-1].startswith("- edgenet fp32: speed 2.50x")  # the target lines come last
    rows[0]["machine_conv_gflops_before"], result["machine_conv_gflops_after"] = 244.6, 150.2
    lines = compare_reference.render_table(result).splitlines()
    (rate,) = [ln for ln in lines if ln.startswith("The machine's speed just before")]
    assert ("(onnxruntime's 3x3 Conv, GFLOP/s; `machine_rate`): speciesnet 5.0.6 (PyTorch) 245; "
            "edgenet fp32 -; at the end 150.") in rate
    assert lines.index(rate) < lines.index(steal) < lines.index("Targets (issue 4), judged "
                                                                "from this run:")
    for row in rows:
        row.pop("cpu_steal_pct")
        row.pop("cold_start_steal_pct", None)
    assert "steal" not in compare_reference.render_table(result)


def test_stack_summary_attributes_samples_to_threads_and_places() -> None:
    """py-spy raw lines -> per-thread samples, keyed by innermost edgenet frame and leaf."""
    import stack_summary

    raw = "\n".join([
        "thread (1): MainThread;main (edgenet/cli.py:10);_run_detector (edgenet/pipeline.py:5);"
        "run_with_iobinding (edgenet/providers.py:9);run (onnxruntime/session.py:3) 30",
        "thread (1): MainThread;main (edgenet/cli.py:10);wait (threading.py:300) 10",
        "thread (2): edgenet-detect;to_tensor (C:\\\\x\\\\edgenet\\\\detector.py:84) 20",
        "thread (3): Thread-1 5",
        "not a py-spy line",
    ])
    summary = stack_summary.summarize(raw)
    main = summary["MainThread"]
    assert main["samples"] == 40
    assert main["places"][("run_with_iobinding (providers.py)", "run (session.py)")] == 30
    assert main["places"][("main (cli.py)", "wait (threading.py)")] == 10
    assert summary["edgenet-detect"]["places"][("to_tensor (detector.py)",
                                                 "to_tensor (detector.py)")] == 20
    assert summary["Thread-1"]["places"][("-", "(no Python frame)")] == 5
    text = stack_summary.render(summary, top=1)
    assert text.splitlines()[0] == "MainThread: 40 samples (62% of all)"
    assert "75.0%  run_with_iobinding (providers.py)  ->  run (session.py)" in text
    flat = stack_summary.summarize("main (edgenet/cli.py:1);wait (threading.py:3) 7")
    assert flat["(all threads)"]["places"][("main (cli.py)", "wait (threading.py)")] == 7
    early = stack_summary.summarize("thread (42);<module> (edgenet/cli.py:5) 3")
    assert early["thread 42 (unnamed)"]["places"][("<module> (cli.py)", "<module> (cli.py)")] == 3


def test_gpu_probe_uint8_input_model_matches_the_float_path(tiny_pack: Path,
                                                            tmp_path: Path) -> None:
    """The probe's uint8-input detector gives the same output as the float model fed
    `detector.to_tensor`, and its in-graph conversion is bit-exact on this provider."""
    import gpu_probe
    import onnxruntime as ort

    from edgenet.detector import to_tensor

    assert gpu_probe.division_exactness(cuda=False)["values_differing_from_to_tensor"] == 0
    u8 = gpu_probe.uint8_input_model(tiny_pack / "det.onnx", tmp_path / "det.uint8in.onnx")
    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(2)]
    float_sess = ort.InferenceSession(str(tiny_pack / "det.onnx"),
                                      providers=["CPUExecutionProvider"])
    u8_sess = ort.InferenceSession(str(u8), providers=["CPUExecutionProvider"])
    assert u8_sess.get_inputs()[0].type == "tensor(uint8)"
    want = float_sess.run(None, {"images": to_tensor(imgs)})[0]
    got = u8_sess.run(None, {u8_sess.get_inputs()[0].name: np.stack(imgs)})[0]
    np.testing.assert_array_equal(got, want)
    x = gpu_probe.input_array(u8_sess, 3)
    assert x.dtype == np.uint8 and x.shape == (3, 960, 1280, 3)


def test_classifier_sensitivity_reports_each_perturbation(tiny_pack: Path) -> None:
    """Rounding-sized changes move a classifier's logits far less than pixel-level noise."""
    import classifier_sensitivity

    x = np.random.default_rng(4).random((2, 480, 480, 3), dtype=np.float32)
    res = classifier_sensitivity.sensitivity(tiny_pack / "cls.onnx", x)
    assert len(res) == 3
    rounding = res["optimisations off (other kernels and summation order)"]["max_logit_diff"]
    ulp = res["each input nudged by one ulp"]["max_logit_diff"]
    noise = res["input noise, sigma 1e-3"]["max_logit_diff"]
    assert max(rounding, ulp) < 1e-4 < noise
    assert all(0 <= r["top1_agreement"] <= 1 and r["logit_scale"] > 0 for r in res.values())


def test_stage_threads_note_names_the_thread_that_waits_least() -> None:
    from edgenet.bench.report import stage_threads_note

    cell = {"ok": True, "device": "cuda", "precision": "fp32", "batch_size": 8,
            # entry 23's H100 profile, as the pipeline's own counters would give it
            "stage_threads": [
                {"thread": "edgenet-decode", "work": "decode results", "seconds": 10.0,
                 "waiting_for_input_s": None, "waiting_for_output_s": 9.0},
                {"thread": "edgenet-detect", "work": "detector runs", "seconds": 10.0,
                 "waiting_for_input_s": 0.2, "waiting_for_output_s": 5.6},
                {"thread": "main", "work": "classifier, ensemble, results", "seconds": 10.0,
                 "waiting_for_input_s": 1.1, "waiting_for_output_s": 0.0}]}
    line = stage_threads_note(cell)
    assert "edgenet-decode - / 90%, edgenet-detect 2% / 56%, main 11% / 0%" in line
    assert line.endswith("the rate is set by main (classifier, ensemble, results).")
    # the first thread waiting least: its decode workers may be what holds it up
    cell["stage_threads"][0]["waiting_for_output_s"] = 0.1
    assert "set by edgenet-decode (decode results)" in stage_threads_note(cell)
    assert "or the decode workers behind it" in stage_threads_note(cell)
    # no stage threads (the CPU), or a failed cell: no line
    assert stage_threads_note({**cell, "stage_threads": []}) == ""
    assert stage_threads_note({**cell, "ok": False}) == ""
    assert stage_threads_note(cell, "default fp32").startswith("- default fp32, stage threads")
