"""The classifier converters' shared child protocol (`converters/child.py`): what the parent
does with each way a child can end, and the child's fidelity proof on a small graph."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from converters.child import (
    EXIT_FIDELITY,
    convert_in_child,
    finish_conversion,
)
from converters.errors import ConvertError

pytestmark = pytest.mark.convert

# A stand-in converter child: what it does depends on which Keras the parent selected
# (TF_USE_LEGACY_KERAS) and on FAKE_CHILD_MODE, so each parent path can be driven.
_FAKE_CHILD = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    Path(args["--report"]).parent.joinpath("calls").open("a").write("legacy\\n" if legacy
                                                                     else "keras3\\n")
    mode = os.environ["FAKE_CHILD_MODE"]
    if mode == "never-loads" or (mode == "legacy-only" and not legacy):
        print("load failed: cannot read this file", file=sys.stderr)
        sys.exit(3)
    if mode == "mismatch":
        Path(args["--report"]).write_text(json.dumps(
            {"failures": ["images: top-1 agreement 0.5 < 1.0"], "fidelity": {"n": 2}}))
        sys.exit(4)
    if mode == "crash":
        print("Traceback: something else broke", file=sys.stderr)
        sys.exit(1)
    Path(args["--dst"]).write_bytes(b"graph")
    Path(args["--report"]).write_text(json.dumps({"failures": [], "legacy": legacy}))
''')


@pytest.fixture
def fake_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "childmod"
    folder.mkdir()
    (folder / "fake_converter_child.py").write_text(_FAKE_CHILD)
    monkeypatch.setenv("PYTHONPATH", str(folder))

    def convert(mode: str) -> dict:
        monkeypatch.setenv("FAKE_CHILD_MODE", mode)
        return convert_in_child(
            "fake_converter_child", tmp_path / "model.keras", tmp_path / "out" / "c.onnx",
            opset=17, check_images=[], attempts=[(False, "Keras 3"), (True, "tf_keras")],
            source_name="the test model", fix="check the test",
        )

    return convert


def test_a_load_failure_tries_the_next_keras(fake_child, tmp_path: Path) -> None:
    report = fake_child("legacy-only")
    dst = tmp_path / "out" / "c.onnx"
    assert report["legacy"] is True and report["onnx"] == str(dst)
    assert dst.read_bytes() == b"graph"
    # Nothing but the graph is left beside it (the work folder is gone).
    assert [p.name for p in dst.parent.iterdir()] == ["c.onnx"]


def test_no_keras_can_load_it(fake_child, tmp_path: Path) -> None:
    with pytest.raises(ConvertError) as err:
        fake_child("never-loads")
    text = str(err.value)
    assert "could not convert the test model" in text
    assert "[Keras 3: could not load it, exit 3]" in text and "[tf_keras:" in text
    assert "cannot read this file" in text and "check the test" in text
    assert not (tmp_path / "out" / "c.onnx").exists()


def test_a_graph_out_of_tolerance_is_refused_at_once(fake_child, tmp_path: Path) -> None:
    with pytest.raises(ConvertError) as err:
        fake_child("mismatch")
    assert "does not match the test model" in str(err.value)
    assert "top-1 agreement 0.5" in str(err.value)
    assert not (tmp_path / "out" / "c.onnx").exists()


def test_another_failure_is_not_retried(fake_child) -> None:
    with pytest.raises(ConvertError) as err:
        fake_child("crash")
    assert "[Keras 3: failed, exit 1]" in str(err.value) and "tf_keras" not in str(err.value)


def _mean_head_graph(path: Path, weight: np.ndarray) -> None:
    """(N, 480, 480, 3) -> mean over the pixels -> (N, 3) @ weight: a stand-in classifier."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["logits"])],
        "head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 480, 480, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        initializer=[numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                     numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


@pytest.mark.parametrize("faithful", [True, False])
def test_finish_conversion_proves_the_graph(tmp_path: Path, faithful: bool) -> None:
    onnx = pytest.importorskip("onnx")
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 10, (3, 7)).astype(np.float32)
    dst, src, report_path = tmp_path / "c.onnx", tmp_path / "c.pt", tmp_path / "report.json"
    _mean_head_graph(dst, weight)
    src.write_bytes(b"source weights")
    x = rng.uniform(0, 1, (3, 480, 480, 3)).astype(np.float32)
    reference = x.astype(np.float64).mean(axis=(1, 2)) @ weight.astype(np.float64)
    if not faithful:
        reference[:, 0] = reference.max() + 50  # a wrong op: class 0 wins everywhere
    code = finish_conversion(
        dst, reference.astype(np.float32), x, ["random0", "random1", "image0"], src=src,
        source_framework="test 1.0", converter="test-exporter", versions={"test": "1.0"},
        opset=18, report_path=report_path, report_extra={"exporter": "test-exporter"},
    )
    report = json.loads(report_path.read_text())
    meta = {p.key: p.value for p in onnx.load(str(dst)).metadata_props}
    assert report["num_labels"] == 7 and report["exporter"] == "test-exporter"
    assert set(report["fidelity"]) >= {"all", "random", "images"}
    if faithful:
        assert code == 0 and report["failures"] == []
        assert meta["edgenet.kind"] == "speciesnet-classifier"
        assert meta["edgenet.num_labels"] == "7" and meta["edgenet.converter"] == "test-exporter"
        assert json.loads(meta["edgenet.fidelity"]) == report["fidelity"]
        assert len(meta["edgenet.source_sha256"]) == 64
    else:
        assert code == EXIT_FIDELITY and report["failures"]
        assert "edgenet.fidelity" not in meta  # an unproven graph is not stamped
