"""`EDGENET_CUDA_GRAPH=1`: the classifier's fixed-binding runs (a CUDA graph on CUDA).

No GPU here: the fixed binding runs on the CPU provider (the same code path without the graph
capture), and what only CUDA does (the session option, the plain-session fallback of a session
that captures) is checked by treating a CPU session as capturing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("onnx")  # the tiny classifier is built with onnx.helper

from test_classifier import _tiny_classifier  # noqa: E402

from edgenet import cuda_graph, providers  # noqa: E402
from edgenet.classifier import ClassifierModel, preprocess_input  # noqa: E402
from edgenet.errors import EdgenetError  # noqa: E402

LABELS = ["a", "b", "c", "d"]


def _model(tmp_path: Path, fp16: bool = False) -> ClassifierModel:
    path = tmp_path / "cls.onnx"
    _tiny_classifier(path, len(LABELS), fp16=fp16)
    return ClassifierModel(path, LABELS, device="cpu", threads=1)


def _crops(n: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 480, 480, 3), dtype=np.uint8)


def test_fixed_binding_runner_matches_plain_runs_at_one_pair_of_buffers(tmp_path) -> None:
    model = _model(tmp_path)
    sess = model.session
    runner = cuda_graph.FixedBindingRunner(sess, model.input_name, model.output_name, 2,
                                           (480, 480, 3), len(LABELS))
    where = (runner.input.data_ptr(), runner.output.data_ptr())
    outs = []
    for seed in (1, 2, 3):
        x = preprocess_input(_crops(2, seed))
        got = runner.run(x)
        want = sess.run([model.output_name], {model.input_name: x})[0]
        assert got.tobytes() == want.tobytes()
        outs.append(got)
        assert (runner.input.data_ptr(), runner.output.data_ptr()) == where
    # each result is the caller's own copy, not a view of the buffer the next run rewrites
    assert not np.array_equal(outs[0], outs[1])
    assert runner.runs == 3
    with pytest.raises(ValueError, match="fixed binding"):
        runner.run(preprocess_input(_crops(3)))


@pytest.mark.parametrize("fp16", [False, True])
def test_classifier_with_fixed_binding_infers_the_same(tmp_path, fp16, monkeypatch) -> None:
    model = _model(tmp_path, fp16=fp16)
    crops = _crops(5)
    want = model.infer(crops)
    model.fixed_binding, model.fixed_batch = True, 2  # 5 crops: 3 runs, the last padded
    got = model.infer(crops)
    assert got.tobytes() == want.tobytes()
    runner = model._fixed_runner
    assert runner is not None and runner.runs == 3
    assert model.infer(crops[:1]).tobytes() == want[:1].tobytes()
    assert model._fixed_runner is runner and runner.runs == 4  # the same buffers again


def test_a_failing_graph_run_falls_back_to_a_plain_session(tmp_path, monkeypatch,
                                                          capsys) -> None:
    model = _model(tmp_path)
    crops = _crops(3)
    want = model.infer(crops)
    plain = model.session
    # as on CUDA with the option: the session captures, so it must be replaced, not rerun
    capturing = SimpleNamespace(get_inputs=plain.get_inputs, get_outputs=plain.get_outputs,
                                get_providers=plain.get_providers, io_binding=plain.io_binding,
                                run_with_iobinding=plain.run_with_iobinding,
                                get_provider_options=lambda: {
                                    "CUDAExecutionProvider": {"enable_cuda_graph": "1"}})
    rebuilt: list[bool] = []

    def plain_session():
        rebuilt.append(True)
        return plain

    model.session, model.plain_session = capturing, plain_session
    model.fixed_binding, model.fixed_batch = True, 2

    def broken(self, batch):
        raise RuntimeError("CUDA graph capture failed")

    monkeypatch.setattr(cuda_graph.FixedBindingRunner, "run", broken)
    got = model.infer(crops)
    assert got.tobytes() == want.tobytes()
    assert rebuilt == [True] and model.session is plain and not model.fixed_binding
    assert "EDGENET_CUDA_GRAPH" in capsys.readouterr().err
    model.infer(crops)  # plain runs from now on: no second fallback
    assert rebuilt == [True]


@pytest.mark.parametrize("capturing", [False, True])
def test_out_of_memory_halves_the_fixed_binding_batch(tmp_path, monkeypatch, capturing) -> None:
    model = _model(tmp_path)
    crops = _crops(3)
    # one row per run at the end, and a one-row MatMul may round apart from a three-row one
    want = np.concatenate([model.infer(crops[i:i + 1]) for i in range(3)])
    model.fixed_binding, model.fixed_batch = True, 2
    model.plain_session = lambda: model.session
    real = cuda_graph.FixedBindingRunner.run

    def small_device(self, batch):
        if batch.shape[0] > 1:
            raise RuntimeError("CUDA failure 2: out of memory")
        return real(self, batch)

    monkeypatch.setattr(cuda_graph.FixedBindingRunner, "run", small_device)
    monkeypatch.setattr(cuda_graph, "captures", lambda _sess: capturing)
    got = model.infer(crops)
    assert got.tobytes() == want.tobytes() and model.fixed_batch == 1
    # without a capture a runner for the new shape; with one, the mode ends (plain runs)
    assert model.fixed_binding is not capturing
    assert (model._fixed_runner is None) is capturing


def test_graph_option_only_where_cuda_runs_first() -> None:
    cuda = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
            ("CPUExecutionProvider", {})]
    assert cuda_graph.graph_options(cuda)[0] == (
        "CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC",
                                  "enable_cuda_graph": "1"})
    assert cuda[0][1] == {"cudnn_conv_algo_search": "HEURISTIC"}  # not changed in place
    trt = [("TensorrtExecutionProvider", {}), *cuda]
    assert cuda_graph.graph_options(trt) == trt
    assert cuda_graph.graph_options([("CPUExecutionProvider", {})]) == [
        ("CPUExecutionProvider", {})]


def test_cuda_options_refuse_a_graph_for_the_per_run_bindings(monkeypatch) -> None:
    monkeypatch.setenv("EDGENET_CUDA_OPTIONS", "prefer_nhwc=1,enable_cuda_graph=1")
    with pytest.raises(EdgenetError, match="EDGENET_CUDA_GRAPH=1"):
        providers.cuda_option_overrides()
    monkeypatch.setenv("EDGENET_CUDA_OPTIONS", "enable_cuda_graph=0")
    assert providers.cuda_option_overrides() == {"enable_cuda_graph": "0"}


def test_no_device_pixels_for_a_fixed_binding_classifier(monkeypatch, capsys) -> None:
    from edgenet.run_defaults import _set_device_pixels

    monkeypatch.setenv("EDGENET_DEVICE_PIXELS", "both")
    comps = SimpleNamespace(detector=SimpleNamespace(device_pixels=False),
                            classifier=SimpleNamespace(device_pixels=False,
                                                       fixed_binding=True))
    _set_device_pixels(comps)
    assert comps.detector.device_pixels and not comps.classifier.device_pixels
    assert "EDGENET_CUDA_GRAPH" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["no_fixed_batch", "uint8_input"])
def test_a_capturing_session_is_never_run_plain(tmp_path, monkeypatch, capsys, case) -> None:
    # Batches of no fixed size, or uint8 crops for the device-side scaling: the runner cannot
    # take them, so a session that captures gives way to a plain one before any run.
    model = _model(tmp_path)
    crops = _crops(3)
    want = model.infer(crops)
    plain = model.session
    rebuilt: list[bool] = []
    model.plain_session = lambda: rebuilt.append(True) or plain
    model.fixed_binding = True
    if case == "no_fixed_batch":
        model.fixed_batch = None
    else:
        model.fixed_batch, model.device_pixels = 2, True
    monkeypatch.setattr(cuda_graph, "captures", lambda sess: sess is plain and not rebuilt)
    got = model.infer(crops)
    assert got.tobytes() == want.tobytes()
    assert rebuilt == [True] and not model.fixed_binding
    assert "EDGENET_CUDA_GRAPH" in capsys.readouterr().err
