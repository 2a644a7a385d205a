"""edgenet.pack: a pack loads fast and every broken pack is refused naming file, problem, fix."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from edgenet.errors import PackError
from edgenet.pack import ModelPack, PackFiles, default_pack_dir, read_onnx_io

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def _identity_model(path: Path, in_dims: list, out_dims: list, elem: int = TensorProto.FLOAT,
                    ir_version: int = 8) -> None:
    """A tiny model whose declared input/output shapes are what the pack checks read."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", elem, in_dims)],
        [helper.make_tensor_value_info("y", elem, out_dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = ir_version
    onnx.save(model, str(path))


def _make_pack(root: Path, n_labels: int = 5, *, sha: bool = False, variants: bool = False,
               cls_in: list | None = None, det_in: list | None = None,
               cls_out: list | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _identity_model(root / "detector.onnx", det_in or ["N", 3, "H", "W"], ["N", "rows", 8])
    _identity_model(root / "classifier.onnx", cls_in or ["N", 480, 480, 3],
                    cls_out or ["N", n_labels])
    (root / "labels.txt").write_text("".join(f"label{i}\n" for i in range(n_labels)), "utf-8")
    (root / "taxonomy.txt").write_text("t\n", "utf-8")
    (root / "geofence.json").write_text("{}", "utf-8")
    info: dict = {"version": "4.0.2a", "type": "always_crop", "classifier": "classifier.onnx",
                  "classifier_labels": "labels.txt", "detector": "detector.onnx",
                  "taxonomy": "taxonomy.txt", "geofence": "geofence.json",
                  "edgenet": {"format": 1, "precision": "fp32", "synthetic": True}}
    if variants:
        _identity_model(root / "detector_fp16.onnx", ["N", 3, "H", "W"], ["N", "rows", 8],
                        TensorProto.FLOAT16)
        _identity_model(root / "classifier_fp16.onnx", ["N", 480, 480, 3], ["N", n_labels],
                        TensorProto.FLOAT16)
        info["edgenet"]["variants"] = {
            "fp16": {"detector": "detector_fp16.onnx", "classifier": "classifier_fp16.onnx"}}
    if sha:
        info["edgenet"]["sha256"] = {
            name: hashlib.sha256((root / name).read_bytes()).hexdigest()
            for name in ("detector.onnx", "classifier.onnx", "labels.txt",
                         *(["classifier_fp16.onnx"] if variants else []))}
    (root / "info.json").write_text(json.dumps(info, indent=1), "utf-8")
    return root


def _edit_info(root: Path, **changes) -> None:
    info = json.loads((root / "info.json").read_text("utf-8"))
    info.update(changes)
    (root / "info.json").write_text(json.dumps(info), "utf-8")


def test_valid_pack_loads(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "pack", sha=True, variants=True)
    pack = ModelPack.load(root)
    assert pack.version == "4.0.2a" and pack.type == "always_crop" and not pack.whole_image
    assert pack.labels == [f"label{i}" for i in range(5)]
    assert pack.synthetic is True and pack.precision == "fp32"
    assert pack.classifier == (root / "classifier.onnx").resolve()
    det, cls = pack.variant("fp32")
    assert (det, cls) == (pack.detector, pack.classifier)
    assert pack.variant("bf16") == (pack.detector, pack.classifier)  # fp32 computed in bf16
    fp16 = pack.variant("fp16")
    assert isinstance(fp16, PackFiles) and fp16.classifier.name == "classifier_fp16.onnx"
    with pytest.raises(PackError, match="no int8 models"):
        pack.variant("int8")
    io = pack.onnx_io[pack.classifier]
    assert io.inputs[0].dims == ("N", 480, 480, 3) and io.outputs[0].dims == ("N", 5)


def test_read_onnx_io_skips_initializer_inputs(tmp_path: Path) -> None:
    """IR<4 models list initializers among graph inputs; the real input is still found."""
    import numpy as np
    from onnx import numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(np.ones(3, np.float32), "b")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    io = read_onnx_io(path)
    assert [t.name for t in io.inputs] == ["x"] and io.inputs[0].dims == (1, 3)
    assert io.inputs[0].dtype == "float32"


def test_missing_pack_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(PackError) as err:
        ModelPack.load(tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and "edgenet models pull speciesnet-v4.0.2a" in msg
    assert "edgenet demo" in msg and "edgenet convert pack" in msg


def test_default_pack_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    assert default_pack_dir() == tmp_path / "home" / "packs" / "default"
    monkeypatch.delenv("EDGENET_HOME")
    assert default_pack_dir() == Path.home() / ".cache" / "edgenet" / "packs" / "default"


def test_missing_file(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p")
    (root / "labels.txt").unlink()
    with pytest.raises(PackError, match="labels.txt.*classifier_labels.*missing"):
        ModelPack.load(root)


def test_bad_json(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p")
    (root / "info.json").write_text('{"version": "4.0.2a", ', "utf-8")
    with pytest.raises(PackError, match="info.json.*not valid JSON"):
        ModelPack.load(root)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"type": "crop_sometimes"}, '"type" must be'),
        ({"version": 4}, '"version" must be a string'),
        ({"detector": "detector.pt"}, "missing"),
        ({"classifier": ["a"]}, '"classifier" must be a non-empty file name'),
        ({"edgenet": {"format": 2}}, "unsupported edgenet pack format"),
        ({"edgenet": {"variants": {"fp16": {"detector": "detector.onnx"}}}},
         'variant "fp16" must give'),
    ],
)
def test_bad_info_values(tmp_path: Path, changes: dict, pattern: str) -> None:
    root = _make_pack(tmp_path / "p")
    _edit_info(root, **changes)
    with pytest.raises(PackError, match=pattern):
        ModelPack.load(root)


def test_missing_key(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p")
    info = json.loads((root / "info.json").read_text("utf-8"))
    del info["geofence"]
    (root / "info.json").write_text(json.dumps(info), "utf-8")
    with pytest.raises(PackError, match="lacks key.*geofence"):
        ModelPack.load(root)


def test_wrong_label_count(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p", n_labels=5)
    (root / "labels.txt").write_text("a\nb\nc\nd\n", "utf-8")
    with pytest.raises(PackError) as err:
        ModelPack.load(root)
    assert "labels.txt" in str(err.value) and "4 lines" in str(err.value)
    assert "5 outputs" in str(err.value) and "fix:" in str(err.value)


def test_symbolic_output_width_is_noted(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p", cls_out=["N", "classes"])
    pack = ModelPack.load(root)
    assert any("symbolic" in note for note in pack.notes)


def test_verified_digests_are_remembered_across_runs_but_not_across_edits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second start reads no model bytes; any change to a file (even one that restores its
    size and mtime) makes it hashed again."""
    import edgenet.pack as pack_mod

    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    root = _make_pack(tmp_path / "p", sha=True)
    ModelPack.load(root)
    cache = tmp_path / "home" / "sha256-verified.json"
    assert len(json.loads(cache.read_text())) == 3  # detector, classifier, labels
    monkeypatch.setattr(pack_mod, "_HASH_CACHE", {})  # a new process
    monkeypatch.setattr(pack_mod, "_PERSISTENT", {})
    hashed: list[str] = []
    real_sha256 = hashlib.sha256

    def counting_sha256(*args: Any) -> Any:
        hashed.append("x")
        return real_sha256(*args)

    monkeypatch.setattr(pack_mod.hashlib, "sha256", counting_sha256)
    ModelPack.load(root)
    assert hashed == []
    target = root / "classifier.onnx"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    monkeypatch.setattr(pack_mod, "_HASH_CACHE", {})
    with pytest.raises(PackError, match="classifier.onnx.*sha256 mismatch"):
        ModelPack.load(root)


def test_tampered_checksum(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p", sha=True)
    data = bytearray((root / "classifier.onnx").read_bytes())
    data[-1] ^= 0x01  # same size, one bit changed
    (root / "classifier.onnx").write_bytes(bytes(data))
    with pytest.raises(PackError, match="classifier.onnx.*sha256 mismatch"):
        ModelPack.load(root)
    ModelPack.load(root, verify_checksums=False)  # the opt-out skips only the hash check


def test_tampered_variant_checked_when_used(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p", sha=True, variants=True)
    data = bytearray((root / "classifier_fp16.onnx").read_bytes())
    data[-1] ^= 0x01
    (root / "classifier_fp16.onnx").write_bytes(bytes(data))
    pack = ModelPack.load(root)  # fp32 runs need not read the variant files
    assert pack.variant("fp32").classifier.name == "classifier.onnx"
    with pytest.raises(PackError, match="classifier_fp16.onnx.*sha256 mismatch"):
        pack.variant("fp16")


def test_truncated_onnx_without_checksum(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p")
    data = (root / "detector.onnx").read_bytes()
    (root / "detector.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(PackError, match="detector.onnx.*truncated or corrupt"):
        ModelPack.load(root)


def test_truncated_onnx_with_checksum(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p", sha=True)
    data = (root / "classifier.onnx").read_bytes()
    (root / "classifier.onnx").write_bytes(data[:-7])
    with pytest.raises(PackError, match="classifier.onnx.*sha256 mismatch"):
        ModelPack.load(root)


def test_not_onnx(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p")
    (root / "detector.onnx").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(PackError, match="detector.onnx"):
        ModelPack.load(root)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"cls_in": ["N", 3, 480, 480]}, "classifier input must be \\(N, 480, 480, 3\\)"),
        ({"cls_in": ["N", 224, 224, 3]}, "classifier input must be \\(N, 480, 480, 3\\)"),
        ({"cls_in": ["N", 480, 480]}, "classifier input must be"),
        ({"det_in": ["N", "H", "W", 3]}, "detector input must have 3 channels"),
        ({"det_in": ["N", 3, 640]}, "detector input must be rank 4"),
    ],
)
def test_wrong_input_shapes(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    root = _make_pack(tmp_path / "p", **kwargs)
    with pytest.raises(PackError, match=pattern):
        ModelPack.load(root)


def test_errors_name_a_fix(tmp_path: Path) -> None:
    root = _make_pack(tmp_path / "p")
    (root / "taxonomy.txt").write_bytes(b"")
    with pytest.raises(PackError) as err:
        ModelPack.load(root)
    assert "taxonomy.txt" in str(err.value) and "empty" in str(err.value)
    assert err.value.fix
