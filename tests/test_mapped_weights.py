"""edgenet.mapped_weights and graph_cache's mapped copies: the same graph, its weights moved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tinyonnx import affine_model

from edgenet import graph_cache, providers
from edgenet.mapped_weights import write_mapped_copy
from edgenet.pack import FramingError

DEMO = Path(providers.__file__).parent / "data" / "demo_pack"
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _copy(source: Path, folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return write_mapped_copy(source, folder, "model.onnx", "weights.data")


@pytest.mark.parametrize("name", ["md_v5a_synth_tiny.onnx", "always_crop_synth_tiny.onnx",
                                  "md_v5a_synth_tiny.int8.onnx"])
def test_copy_of_a_pack_model_runs_bit_identical(tmp_path: Path, name: str) -> None:
    source = DEMO / name
    assert _copy(source, tmp_path / "copy")
    graph, weights = tmp_path / "copy" / "model.onnx", tmp_path / "copy" / "weights.data"
    assert graph.stat().st_size < source.stat().st_size * 0.75  # the weights left the protobuf
    assert weights.stat().st_size > source.stat().st_size / 4
    shape = ((1, 3, 64, 128) if name.startswith("md_") else (2, 480, 480, 3))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    np.testing.assert_array_equal(_run(graph, x), _run(source, x))


def test_large_tensors_move_aligned_and_small_ones_stay(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    big = affine_model(tmp_path / "big.onnx", np.full((4, 65536), 0.5, np.float32),
                       np.arange(65536, dtype=np.float32))  # 1 MiB weight, 256 KiB bias
    small = affine_model(tmp_path / "small.onnx", np.ones((4, 128), np.float32),
                         np.ones(128, np.float32))  # 2 KiB weight, 512-byte bias
    for source in (big, small):
        assert _copy(source, tmp_path / source.stem)
        model = onnx.load(str(tmp_path / source.stem / "model.onnx"), load_external_data=False)
        where = {t.name: ({e.key: e.value for e in t.external_data}, t.data_location)
                 for t in model.graph.initializer}
        np.testing.assert_array_equal(_run(tmp_path / source.stem / "model.onnx", X),
                                      _run(source, X))
        if source is big:
            assert where["w"][1] == where["b"][1] == onnx.TensorProto.EXTERNAL
            assert int(where["w"][0]["offset"]) % 65536 == 0  # >= 1 MiB: 64 KiB granularity
            assert int(where["b"][0]["offset"]) % 4096 == 0
            assert where["w"][0]["location"] == "weights.data"
        else:
            assert where["w"][1] == onnx.TensorProto.EXTERNAL
            assert where["b"] == ({}, onnx.TensorProto.DEFAULT)  # < 1024 bytes: inline


def test_no_copy_of_a_model_already_external_or_corrupt(tmp_path: Path) -> None:
    source = affine_model(tmp_path / "m.onnx", np.ones((4, 512), np.float32),
                          np.ones(512, np.float32))
    assert _copy(source, tmp_path / "once")
    # its tensors already live in a file beside it: a copy elsewhere would lose them
    assert not _copy(tmp_path / "once" / "model.onnx", tmp_path / "twice")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(FramingError):
        _copy(truncated, tmp_path / "cut")


def test_which_providers_get_a_mapped_copy(tmp_path: Path, cache_on: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = affine_model(tmp_path / "m.onnx", np.ones((4, 512), np.float32),
                         np.ones(512, np.float32))
    for first in ("CUDAExecutionProvider", "DmlExecutionProvider", "OpenVINOExecutionProvider"):
        path = graph_cache.mapped_model_path(model, [first, "CPUExecutionProvider"])
        assert path is not None and cache_on in path.parents
    for names in (["CPUExecutionProvider"], ["TensorrtExecutionProvider",
                  "CUDAExecutionProvider", "CPUExecutionProvider"],
                  ["CoreMLExecutionProvider", "CPUExecutionProvider"]):
        assert graph_cache.mapped_model_path(model, names) is None
    key = graph_cache.mapped_model_path(model, ["CUDAExecutionProvider"])
    affine_model(model, np.zeros((4, 512), np.float32), np.ones(512, np.float32))
    assert graph_cache.mapped_model_path(model, ["CUDAExecutionProvider"]) != key
    monkeypatch.setenv("EDGENET_ORT_CACHE", "0")
    assert graph_cache.mapped_model_path(model, ["CUDAExecutionProvider"]) is None


@pytest.fixture()
def cpu_as_mapped(loaded_paths: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The CPU provider treated as one that loads mapped copies (the only provider here);
    returns the paths sessions are built from."""
    monkeypatch.setattr(graph_cache, "MAPPED_PROVIDERS", ("CPUExecutionProvider",))
    return loaded_paths


def test_make_session_builds_from_the_mapped_copy(tmp_path: Path, cache_on: Path,
                                                  cpu_as_mapped: list[str]) -> None:
    model = affine_model(tmp_path / "pack" / "m.onnx", np.full((4, 512), 0.25, np.float32),
                         np.arange(512, dtype=np.float32))
    first = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    copy = graph_cache.mapped_model_path(model, ["CPUExecutionProvider"])
    assert copy is not None and copy.is_file()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["model.onnx", "source.json",
                                                             "weights.data"]
    again = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    assert cpu_as_mapped == [str(copy), str(copy)]  # written once, then reused
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, _run(model, X))  # the original's outputs
    assert not [p for p in cache_on.iterdir() if p.name.startswith(".")]  # no temporaries


def test_damaged_copy_falls_back_to_the_model_and_is_rewritten(
        tmp_path: Path, cache_on: Path, cpu_as_mapped: list[str]) -> None:
    model = affine_model(tmp_path / "m.onnx", np.full((4, 512), 0.25, np.float32),
                         np.ones(512, np.float32))
    want = _run(model, X)
    cpu_as_mapped.clear()
    providers.make_session(model, device="cpu")
    copy = graph_cache.mapped_model_path(model, ["CPUExecutionProvider"])
    assert copy is not None
    (copy.parent / "weights.data").write_bytes(b"\0" * 100)  # shorter than its tensors
    out = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    np.testing.assert_array_equal(out, want)
    assert cpu_as_mapped[1:] == [str(copy), str(model)]
    assert not copy.parent.exists()  # removed, so the next start writes a good one
    providers.make_session(model, device="cpu")
    assert cpu_as_mapped[3:] == [str(copy)] and copy.is_file()


def test_unwritable_cache_loads_the_model(tmp_path: Path, cache_on: Path,
                                         cpu_as_mapped: list[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = affine_model(tmp_path / "m.onnx", np.ones((4, 512), np.float32),
                         np.ones(512, np.float32))

    def full_disk(*args: object, **kwargs: object) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(graph_cache.mapped_weights, "write_mapped_copy", full_disk)
    want = _run(model, X)
    cpu_as_mapped.clear()
    out = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    np.testing.assert_array_equal(out, want)
    assert cpu_as_mapped == [str(model)]
    copy = graph_cache.mapped_model_path(model, ["CPUExecutionProvider"])
    assert copy is not None and not copy.parent.exists()
    assert not [p for p in cache_on.iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.skipif("OpenVINOExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-openvino (a venv of its own)")
def test_openvino_session_uses_the_copy_with_identical_outputs(
        tmp_path: Path, cache_on: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = DEMO / "md_v5a_synth_tiny.onnx"
    x = np.random.default_rng(1).random((1, 3, 64, 128), dtype=np.float32)
    out = providers.make_session(model, device="openvino").run(None, {"images": x})[0]
    copy = graph_cache.mapped_model_path(model, ["OpenVINOExecutionProvider"])
    assert copy is not None and copy.is_file()
    monkeypatch.setenv("EDGENET_ORT_CACHE", "0")
    plain = providers.make_session(model, device="openvino").run(None, {"images": x})[0]
    np.testing.assert_array_equal(out, plain)
