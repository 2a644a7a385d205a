"""Issue 5 item 4: every bad configuration is refused before any work, exit 2, one message.

Each case runs the real command line entry point (`edgenet.cli.main`) in-process and checks:
exit code 2; stderr starts with "edgenet: error:", names the offending file (or flag), says
the problem, gives a "fix:"; no "Traceback"; and no predictions file was written (or the
existing one is unchanged). A subprocess sample checks the same end to end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("onnx")  # tiny packs are built with onnx.helper (dev dependency)

from tinypack import LABELS, build_tiny_pack  # noqa: E402

from edgenet.cli import main  # noqa: E402
from edgenet.testing.bad_inputs import make_image_set  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A tiny pack, three images, and real outputs of each component on them."""
    root = tmp_path_factory.mktemp("config_errors")
    pack = build_tiny_pack(root / "pack")
    images = make_image_set(root / "images", 3, subfolders=1, size=(120, 90))
    other = make_image_set(root / "other_images", 2, seed=5, subfolders=1)
    base = ["run", "--model", str(pack), "--workers", "0", "--quiet"]
    outs = {}
    for name, extra in [
        ("detections", ["--detector-only"]),
        ("full", []),
        ("other_detections", ["--detector-only"]),
    ]:
        out = root / f"{name}.json"
        folder = other[0].parent if name.startswith("other") else images[0].parent
        assert main([*base, "--folders", str(folder), "--predictions-json", str(out), *extra]) == 0
        outs[name] = out
    out = root / "classifications.json"
    code = main([*base, "--folders", str(images[0].parent), "--classifier-only",
                 "--detections-json", str(outs["detections"]), "--predictions-json", str(out)])
    assert code == 0
    outs["classifications"] = out
    return {"root": root, "pack": pack, "images": images, "folder": images[0].parent, **outs}


def expect_refusal(capsys, args: list[str], *, names: str | Path | None, says: str,
                   untouched: Path | None = None) -> str:
    """Run `edgenet ARGS`; assert exit 2 with one clear message; return the message."""
    before = untouched.read_bytes() if untouched is not None and untouched.exists() else None
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("edgenet: error:"), err
    assert err.count("edgenet: error:") == 1, err
    assert "fix:" in err, err
    if names is not None:
        assert str(names) in err, err
    assert says.lower() in err.lower(), err
    if untouched is not None:
        if before is None:
            assert not untouched.exists(), "a predictions file was written"
        else:
            assert untouched.read_bytes() == before, "the existing predictions file changed"
    print(err)  # shown with -s: the messages a user would read
    return err


def run_args(env: dict, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(env["pack"]), "--workers", "0", "--quiet",
            "--predictions-json", str(out), *extra]


# ---------------------------------------------------------------------------------------
# instances JSON

BAD_INSTANCES: dict[str, tuple[bytes | str, str]] = {
    "not_json": ('{"instances": [{"filepath": "a.jpg"', "not valid JSON"),
    "empty_file": ("", "not valid JSON"),
    "not_utf8": (b'{"instances": [{"filepath": "\xff\xfe.jpg"}]}', "UTF-8"),
    "top_level_list": ('[{"filepath": "a.jpg"}]', "object"),
    "no_instances_key": ('{"images": [{"file": "a.jpg"}]}', "instances"),
    "predictions_file": ('{"predictions": [{"filepath": "a.jpg"}]}', "predictions file"),
    "instances_not_list": ('{"instances": {"filepath": "a.jpg"}}', "must be a list"),
    "instance_not_object": ('{"instances": ["a.jpg"]}', "must be an object"),
    "no_filepath": ('{"instances": [{"path": "a.jpg"}]}', "filepath"),
    "filepath_number": ('{"instances": [{"filepath": 7}]}', "filepath"),
    "latitude_string": ('{"instances": [{"filepath": "a.jpg", "latitude": "45N"}]}', "latitude"),
    "latitude_range": ('{"instances": [{"filepath": "a.jpg", "latitude": 123.0}]}', "latitude"),
    "country_name": ('{"instances": [{"filepath": "a.jpg", "country": "Kenya"}]}', "country"),
    "country_unknown": ('{"instances": [{"filepath": "a.jpg", "country": "XYZ"}]}', "XYZ"),
    "country_number": ('{"instances": [{"filepath": "a.jpg", "country": 404}]}', "country"),
    "admin1_long": (
        '{"instances": [{"filepath": "a.jpg", "country": "USA", "admin1_region": "CAL"}]}',
        "CAL",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INSTANCES))
def test_bad_instances_json(env, tmp_path, capsys, case) -> None:
    content, says = BAD_INSTANCES[case]
    path = tmp_path / f"{case}.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "out.json"
    expect_refusal(capsys, run_args(env, out, "--instances-json", str(path)),
                   names=path, says=says, untouched=out)


def test_missing_instances_json(env, tmp_path, capsys) -> None:
    path = tmp_path / "nope.json"
    out = tmp_path / "out.json"
    expect_refusal(capsys, run_args(env, out, "--instances-json", str(path)),
                   names=path, says="not found", untouched=out)


# ---------------------------------------------------------------------------------------
# country / region flags

@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--country", "US"], "US"),
        (["--country", "XYZ"], "XYZ"),
        (["--country", "usa1"], "usa1"),
        (["--country", "USA", "--admin1-region", "CAL"], "CAL"),
    ],
)
def test_bad_region_flags(env, tmp_path, capsys, flags, says) -> None:
    out = tmp_path / "out.json"
    expect_refusal(capsys, run_args(env, out, "--folders", str(env["folder"]), *flags),
                   names=None, says=says, untouched=out)


def test_unknown_us_state_code_is_refused(env, tmp_path, capsys) -> None:
    """"ZZ" is no US state: geofencing by state would silently never match.

    Issue 5 item 4 asks for unknown region codes to be refused; two characters are not enough.
    """
    out = tmp_path / "out.json"
    expect_refusal(
        capsys,
        run_args(env, out, "--folders", str(env["folder"]), "--country", "USA",
                 "--admin1-region", "ZZ"),
        names=None, says="ZZ", untouched=out,
    )


# ---------------------------------------------------------------------------------------
# detections / classifications JSON and resume files

def _mutated(src: Path, dst: Path, change: Callable[[dict], None]) -> Path:
    data = json.loads(src.read_text(encoding="utf-8"))
    change(data)
    dst.write_text(json.dumps(data), encoding="utf-8")
    return dst


def test_classifier_only_refuses_ensemble_output_as_detections(env, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    expect_refusal(
        capsys,
        run_args(env, out, "--folders", str(env["folder"]), "--classifier-only",
                 "--detections-json", str(env["full"])),
        names=env["full"], says="ensemble", untouched=out,
    )


def test_classifier_only_refuses_classifier_output_as_detections(env, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    expect_refusal(
        capsys,
        run_args(env, out, "--folders", str(env["folder"]), "--classifier-only",
                 "--detections-json", str(env["classifications"])),
        names=env["classifications"], says="classifier", untouched=out,
    )


def test_ensemble_only_refuses_ensemble_output_as_classifications(env, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    expect_refusal(
        capsys,
        run_args(env, out, "--folders", str(env["folder"]), "--ensemble-only",
                 "--detections-json", str(env["detections"]),
                 "--classifications-json", str(env["full"])),
        names=env["full"], says="ensemble", untouched=out,
    )


def test_ensemble_only_refuses_same_file_twice(env, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    expect_refusal(
        capsys,
        run_args(env, out, "--folders", str(env["folder"]), "--ensemble-only",
                 "--detections-json", str(env["detections"]),
                 "--classifications-json", str(env["detections"])),
        names=env["detections"], says="same file", untouched=out,
    )


def test_detections_from_another_image_set(env, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    expect_refusal(
        capsys,
        run_args(env, out, "--folders", str(env["folder"]), "--ensemble-only",
                 "--detections-json", str(env["other_detections"]),
                 "--classifications-json", str(env["classifications"])),
        names=env["other_detections"], says="same set of instances", untouched=out,
    )


def test_classifications_on_other_detections(env, tmp_path, capsys) -> None:
    """Classifications computed on different boxes than the detections given."""

    def shift_boxes(data: dict) -> None:
        for prediction in data["predictions"]:
            for det in prediction.get("detections", []):
                det["bbox"] = [min(1.0, v + 0.05) for v in det["bbox"]]

    shifted = _mutated(env["detections"], tmp_path / "shifted_detections.json", shift_boxes)
    assert any(p.get("detections") for p in json.loads(shifted.read_text())["predictions"])
    out = tmp_path / "out.json"
    expect_refusal(
        capsys,
        run_args(env, out, "--folders", str(env["folder"]), "--ensemble-only",
                 "--detections-json", str(shifted),
                 "--classifications-json", str(env["classifications"])),
        names=env["classifications"], says="different detections", untouched=out,
    )


@pytest.mark.parametrize(
    ("case", "content", "says"),
    [
        ("instances_file", {"instances": [{"filepath": "a.jpg"}]}, "instances file"),
        ("md_format", {"images": [{"file": "a.jpg", "detections": []}]}, "MegaDetector"),
        ("bad_bbox", None, "bbox"),
        ("bad_conf", None, "conf"),
    ],
)
def test_wrong_schema_detections_json(env, tmp_path, capsys, case, content, says) -> None:
    path = tmp_path / f"{case}.json"
    if content is not None:
        path.write_text(json.dumps(content), encoding="utf-8")
    else:
        def corrupt(data: dict) -> None:
            for prediction in data["predictions"]:
                for det in prediction.get("detections", []):
                    if case == "bad_bbox":
                        det["bbox"] = det["bbox"][:3]
                    else:
                        det["conf"] = "high"
        _mutated(env["detections"], path, corrupt)
    out = tmp_path / "out.json"
    expect_refusal(
        capsys,
        run_args(env, out, "--folders", str(env["folder"]), "--classifier-only",
                 "--detections-json", str(path)),
        names=path, says=says, untouched=out,
    )


def test_resume_file_from_another_image_set(env, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    shutil.copy(env["other_detections"], out)
    expect_refusal(capsys, run_args(env, out, "--folders", str(env["folder"]), "--detector-only"),
                   names=out, says="same set of instances", untouched=out)


def test_resume_file_from_another_component(env, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    shutil.copy(env["full"], out)
    expect_refusal(capsys, run_args(env, out, "--folders", str(env["folder"]), "--detector-only"),
                   names=out, says="different components", untouched=out)


def test_resume_file_that_is_not_json(env, tmp_path, capsys) -> None:
    out = tmp_path / "out.json"
    text = env["full"].read_text(encoding="utf-8")
    out.write_text(text[: len(text) // 2], encoding="utf-8")  # e.g. written by another tool
    expect_refusal(capsys, run_args(env, out, "--folders", str(env["folder"])),
                   names=out, says="not valid JSON", untouched=out)


# ---------------------------------------------------------------------------------------
# model packs

def _pack_copy(env: dict, tmp_path: Path) -> Path:
    dst = tmp_path / "pack"
    shutil.copytree(env["pack"], dst)
    return dst


def _info(pack: Path) -> dict:
    return json.loads((pack / "info.json").read_text(encoding="utf-8"))


def _write_info(pack: Path, info: dict) -> None:
    (pack / "info.json").write_text(json.dumps(info), encoding="utf-8")


def _with_checksums(pack: Path) -> None:
    info = _info(pack)
    sums = {name: hashlib.sha256((pack / name).read_bytes()).hexdigest()
            for name in ("detector.onnx", "classifier.onnx")}
    info["edgenet"] = {"format": 1, "sha256": sums}
    _write_info(pack, info)


def _pack_run(env: dict, pack: Path, out: Path) -> list[str]:
    return ["run", "--model", str(pack), "--workers", "0", "--quiet", "--predictions-json",
            str(out), "--folders", str(env["folder"])]


def test_labels_count_disagrees_with_classifier(env, tmp_path, capsys) -> None:
    pack = _pack_copy(env, tmp_path)
    labels = pack / "labels.txt"
    labels.write_text("\n".join([*LABELS, LABELS[-1].replace("felidae family", "extra")]) + "\n",
                      encoding="utf-8")
    out = tmp_path / "out.json"
    expect_refusal(capsys, _pack_run(env, pack, out), names=labels,
                   says=f"{len(LABELS) + 1} lines", untouched=out)


@pytest.mark.parametrize("which", ["classifier.onnx", "detector.onnx"])
def test_truncated_onnx_with_checksum(env, tmp_path, capsys, which) -> None:
    pack = _pack_copy(env, tmp_path)
    _with_checksums(pack)
    model = pack / which
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.json"
    expect_refusal(capsys, _pack_run(env, pack, out), names=model, says="sha256",
                   untouched=out)


def test_tampered_onnx_same_size_with_checksum(env, tmp_path, capsys) -> None:
    """One weight byte flipped: the size and protobuf framing still look fine."""
    pack = _pack_copy(env, tmp_path)
    _with_checksums(pack)
    model = pack / "classifier.onnx"
    data = bytearray(model.read_bytes())
    data[-20] ^= 0x40
    model.write_bytes(bytes(data))
    out = tmp_path / "out.json"
    expect_refusal(capsys, _pack_run(env, pack, out), names=model, says="sha256",
                   untouched=out)


def test_truncated_onnx_without_checksum(env, tmp_path, capsys) -> None:
    pack = _pack_copy(env, tmp_path)
    model = pack / "detector.onnx"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out.json"
    expect_refusal(capsys, _pack_run(env, pack, out), names=model, says="", untouched=out)


def _tiny_model(path: Path, input_dims: list, output_dims: list, op: str = "Identity") -> None:
    """A one-node ONNX model with the given input/output shapes (to trip shape checks)."""
    import onnx
    from onnx import TensorProto, helper

    if op == "Identity":
        nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)]
    else:
        nodes = [helper.make_node(op, ["x"], ["y"])]
    graph = helper.make_graph(
        nodes, "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize(
    ("which", "input_dims", "output_dims", "says"),
    [
        ("classifier.onnx", ["N", 3, 480, 480], ["N", len(LABELS)], "480"),  # NCHW export
        ("classifier.onnx", ["N", 224, 224, 3], ["N", len(LABELS)], "480"),  # wrong size
        ("classifier.onnx", ["N", 480, 480], ["N", len(LABELS)], "480"),  # rank 3
        ("detector.onnx", ["N", 1, "H", "W"], ["N", 6, 8], "3 channels"),  # grey input
        ("detector.onnx", ["N", "H", "W"], ["N", 6, 8], "rank 4"),  # rank 3
    ],
)
def test_wrong_input_shapes(env, tmp_path, capsys, which, input_dims, output_dims,
                            says) -> None:
    pack = _pack_copy(env, tmp_path)
    model = pack / which
    _tiny_model(model, input_dims, output_dims)
    out = tmp_path / "out.json"
    expect_refusal(capsys, _pack_run(env, pack, out), names=model, says=says, untouched=out)


def test_onnx_with_unknown_operator(env, tmp_path, capsys) -> None:
    """Well-framed, right shapes, but onnxruntime cannot build it (e.g. a newer exporter)."""
    pack = _pack_copy(env, tmp_path)
    model = pack / "classifier.onnx"
    _tiny_model(model, ["N", 480, 480, 3], ["N", len(LABELS)], op="NoSuchOperatorXyz")
    out = tmp_path / "out.json"
    expect_refusal(capsys, _pack_run(env, pack, out), names=model, says="", untouched=out)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("info_not_json", "info.json"),
        ("info_missing_key", "detector"),
        ("info_bad_type", "type"),
        ("geofence_not_json", "geofence"),
        ("missing_detector", "detector"),
        ("info_nested_too_deeply", "info.json"),
        ("geofence_nested_too_deeply", "geofence"),
    ],
)
def test_broken_pack_files(env, tmp_path, capsys, case, says) -> None:
    pack = _pack_copy(env, tmp_path)
    info = _info(pack)
    named: Path = pack / "info.json"
    if case == "info_not_json":
        (pack / "info.json").write_text("{version: 1", encoding="utf-8")
    elif case == "info_missing_key":
        bad = copy.deepcopy(info)
        del bad["detector"]
        _write_info(pack, bad)
    elif case == "info_bad_type":
        _write_info(pack, {**info, "type": "crop_sometimes"})
    elif case == "geofence_not_json":
        named = pack / "geofence.json"
        named.write_text('{"a": {"allow": ', encoding="utf-8")
    elif case in ("info_nested_too_deeply", "geofence_nested_too_deeply"):
        # Valid JSON that Python's parser refuses with RecursionError.
        named = pack / ("info.json" if case.startswith("info") else "geofence.json")
        named.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    elif case == "missing_detector":
        named = pack / "detector.onnx"
        named.unlink()
    out = tmp_path / "out.json"
    expect_refusal(capsys, _pack_run(env, pack, out), names=named, says=says, untouched=out)


def test_missing_pack(env, tmp_path, capsys) -> None:
    missing = tmp_path / "no_pack_here"
    out = tmp_path / "out.json"
    args = ["run", "--model", str(missing), "--folders", str(env["folder"]), "--quiet",
            "--predictions-json", str(out)]
    expect_refusal(capsys, args, names=missing, says="pack", untouched=out)


# ---------------------------------------------------------------------------------------
# end to end: the same refusals through the console script, in a fresh interpreter

@pytest.mark.parametrize("case", ["labels", "instances", "country"])
def test_refusal_end_to_end(env, tmp_path, case) -> None:
    out = tmp_path / "out.json"
    args = ["run", "--model", str(env["pack"]), "--workers", "0", "--predictions-json",
            str(out)]
    if case == "labels":
        pack = _pack_copy(env, tmp_path)
        (pack / "labels.txt").write_text("\n".join(LABELS[:-1]) + "\n", encoding="utf-8")
        args[2] = str(pack)
        args += ["--folders", str(env["folder"])]
        named = str(pack / "labels.txt")
    elif case == "instances":
        bad = tmp_path / "instances.json"
        bad.write_text('{"instances": [{"file": "a.jpg"}]}', encoding="utf-8")
        args += ["--instances-json", str(bad)]
        named = str(bad)
    else:
        args += ["--folders", str(env["folder"]), "--country", "Kenya"]
        named = "Kenya"
    proc = subprocess.run([sys.executable, "-m", "edgenet", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert named in proc.stderr
    assert "fix:" in proc.stderr
    assert not out.exists()
