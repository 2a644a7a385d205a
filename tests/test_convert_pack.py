"""`edgenet models synth` -> `edgenet convert pack` -> a pack `edgenet run` loads.

One tiny synthetic SpeciesNet folder and one converted pack are built per session (about a
minute or two on a small CPU: the tiny networks are cheap, the framework start-ups are not);
every other test reuses them or swaps the framework converters for copies of their outputs so
the pack logic (checks, atomic placement, errors) is tested in seconds.

`tiny_source_folder(request)` is shared with test_pull_loopback.py (imported from there), so a
session builds the synthetic folder once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgenet.errors import EdgenetError, PackError

_CACHE: dict[str, Any] = {}
NEEDS = ("torch", "onnx", "onnx2torch", "tensorflow", "tf2onnx", "tf_keras")


def _require_convert_extra() -> None:
    # find_spec, not import: TensorFlow must not be imported into the pytest process.
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"convert extra not installed ({', '.join(missing)})")


def tiny_source_folder(request: pytest.FixtureRequest) -> Path:
    """The session's tiny synthetic SpeciesNet folder (generated labels), built once."""
    if "src" not in _CACHE:
        _require_convert_extra()
        from converters.synth import synth_source_folder

        factory = request.getfixturevalue("tmp_path_factory")
        dst = factory.mktemp("synth") / "speciesnet_tiny"
        _CACHE["src"] = synth_source_folder(dst, "tiny", seed=0, labels="generated")
    return _CACHE["src"]


@pytest.fixture(scope="session")
def tiny_source(request: pytest.FixtureRequest) -> Path:
    return tiny_source_folder(request)


@pytest.fixture(scope="session")
def tiny_pack(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from converters.pack import convert_pack

    dst = tmp_path_factory.mktemp("packs") / "tiny"
    return convert_pack(tiny_source, dst, variants=("fp16", "int8"), max_images=2,
                        detector_size=640, calibration_size=320)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# the synthetic source folder


@pytest.mark.convert
def test_synth_folder_is_in_speciesnet_format(tiny_source: Path) -> None:
    info = json.loads((tiny_source / "info.json").read_text())
    for key in ("version", "type", "classifier", "classifier_labels", "detector", "taxonomy",
                "geofence"):
        assert (tiny_source / info[key]).is_file() or key in ("version", "type"), key
    assert info["type"] == "always_crop" and "synthetic" in info["version"]
    assert info["classifier"].endswith(".pt") and info["detector"].endswith(".pt")
    twins = info["edgenet_keras_classifier"]
    assert set(twins) == {"keras", "h5"}
    assert all((tiny_source / f).is_file() for f in twins.values())
    labels = (tiny_source / info["classifier_labels"]).read_text().splitlines()
    assert len(labels) == 2498 and len(set(labels)) == 2498
    assert all(len(lb.split(";")) == 7 for lb in labels)
    for special in ("f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank",
                    "1f689929-883d-4dae-958c-3d57ab5b6c16;;;;;;animal",
                    "e2895ed5-780b-48f6-8a11-9e27cb594511;;;;;;vehicle"):
        assert special in labels
    taxonomy = set((tiny_source / info["taxonomy"]).read_text().splitlines())
    assert set(labels) <= taxonomy
    # every ancestor of a species label has its own taxonomy line (roll-ups resolve)
    taxa = {";".join(t.split(";")[1:6]) for t in taxonomy}
    for lb in labels[:200]:
        f = lb.split(";")
        if f[5]:
            assert ";".join(f[1:5] + [""]) in taxa
    geofence = json.loads((tiny_source / info["geofence"]).read_text())
    rules = [r for rule in geofence.values() for r in rule]
    assert "allow" in rules and "block" in rules
    # A Torch pickle of the detector that names yolov5's module paths (models.yolo...).
    from converters.yolo_modules import yolov5_names_in_pickle

    names = yolov5_names_in_pickle(tiny_source / info["detector"])
    assert any(n.startswith("models.yolo") for n in names)


# --------------------------------------------------------------------------------------------
# the converted pack


@pytest.mark.convert
def test_pack_loads_and_lists_every_file(tiny_pack: Path, tiny_source: Path) -> None:
    from edgenet.pack import ModelPack

    pack = ModelPack.load(tiny_pack)
    info = json.loads((tiny_pack / "info.json").read_text())
    src_info = json.loads((tiny_source / "info.json").read_text())
    edge = info["edgenet"]
    assert edge["format"] == 1 and edge["precision"] == "fp32" and edge["synthetic"] is True
    assert pack.synthetic is True and pack.version == src_info["version"]
    assert info["detector"].endswith(".onnx") and info["classifier"].endswith(".onnx")
    assert set(edge["variants"]) == {"fp16", "int8"}
    assert set(pack.variants) == {"fp16", "int8"}
    files = {p.relative_to(tiny_pack).as_posix() for p in tiny_pack.rglob("*") if p.is_file()}
    assert set(edge["sha256"]) == files - {"info.json"}
    for rel, digest in edge["sha256"].items():
        assert _sha(tiny_pack / rel) == digest
    assert edge["source"]["detector"]["sha256"] == _sha(tiny_source / src_info["detector"])
    assert edge["source"]["classifier"]["sha256"] == _sha(tiny_source / src_info["classifier"])
    assert edge["source"]["classifier"]["framework"] == "torch"
    assert set(edge["source"]["keras_twins"]) == {"keras", "h5"}
    assert "onnxruntime" in edge["converter_versions"]
    # labels/taxonomy/geofence are copied unchanged
    for key in ("classifier_labels", "taxonomy", "geofence"):
        assert _sha(tiny_pack / info[key]) == _sha(tiny_source / src_info[key])
    assert not [p for p in tiny_pack.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.convert
def test_fidelity_within_tolerance(tiny_pack: Path) -> None:
    fid = json.loads((tiny_pack / "fidelity.json").read_text())
    det, cls = fid["detector"], fid["classifier"]
    assert det["fp32"]["passed"] is True and det["fp32"]["failures"] == []
    assert cls["fp32"]["failures"] == []
    twins = cls["keras_twins"]
    assert set(twins) == {"keras", "h5"}
    for twin in twins.values():
        assert twin["conversion"]["failures"] == []
        assert twin["vs_primary_onnx"]["top1_agreement"] == 1.0
        assert twin["vs_primary_onnx"]["raw"]["max_rel"] <= 1e-3
    for variant in ("fp16", "int8"):
        d, c = det[variant], cls[variant]
        assert d["verdict"] in ("close", "degraded") and c["verdict"] in ("close", "degraded")
        for key in ("recall", "precision"):
            assert 0.0 <= d["detections_used"][key] <= 1.0
        assert 0.0 <= c["top1_agreement"] <= 1.0 and c["samples"] >= 1
        assert d["images"] >= 1
    # fp16 is a rounding of the same graph: logits move little, the top class does not.
    assert cls["fp16"]["raw"]["max_rel"] < 1e-2
    assert cls["fp16"]["top1_in_top5"] == 1.0


@pytest.mark.convert
def test_onnx_metadata_carries_labels_and_sources(tiny_pack: Path) -> None:
    import onnx

    info = json.loads((tiny_pack / "info.json").read_text())
    labels = (tiny_pack / info["classifier_labels"]).read_text().splitlines()
    for rel in (info["classifier"], info["edgenet"]["variants"]["int8"]["classifier"]):
        meta = {p.key: p.value for p in onnx.load(str(tiny_pack / rel)).metadata_props}
        assert meta["edgenet.labels"].split("\n") == labels
        assert meta["edgenet.source_sha256"] == info["edgenet"]["source"]["classifier"]["sha256"]
    det_meta = {p.key: p.value for p in onnx.load(str(tiny_pack / info["detector"])
                                                  ).metadata_props}
    assert det_meta["edgenet.source_sha256"] == info["edgenet"]["source"]["detector"]["sha256"]
    assert det_meta["edgenet.precision"] == "fp32"


@pytest.mark.convert
def test_cpu_session_cache_prepared_once(tiny_pack: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """convert_pack ends by building the CPU models once, so the pack's first run neither
    optimises nor saves graphs (that save raised the full pack's first-run peak RSS)."""
    from converters.pack import prepare_cpu_sessions
    from edgenet.graph_cache import optimized_model_path

    monkeypatch.setenv("EDGENET_ORT_CACHE", "1")
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    info = json.loads((tiny_pack / "info.json").read_text())
    models = [info["detector"], info["classifier"]] + [
        f for v, files in info["edgenet"]["variants"].items() if v != "fp16"
        for f in files.values()]
    assert prepare_cpu_sessions(tiny_pack) == len(models)
    for name in models:
        cached = optimized_model_path(tiny_pack / name, ["CPUExecutionProvider"])
        assert cached is not None and cached.is_file()
    assert prepare_cpu_sessions(tiny_pack) == 0  # already there


@pytest.mark.convert
def test_mapped_copies_prepared_only_where_a_gpu_provider_is_installed(
        tiny_pack: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA (or DirectML, OpenVINO) installed, convert_pack also writes the mapped
    copies those sessions load, for fp32 and fp16; without one, nothing (they cost disk)."""
    import onnxruntime as ort

    from converters.pack import prepare_mapped_copies
    from edgenet.graph_cache import mapped_model_path

    monkeypatch.setenv("EDGENET_ORT_CACHE", "1")
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert prepare_mapped_copies(tiny_pack) == 0
    assert not (tmp_path / "home").exists()
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    info = json.loads((tiny_pack / "info.json").read_text())
    models = [info["detector"], info["classifier"],
              *info["edgenet"]["variants"]["fp16"].values()]
    assert prepare_mapped_copies(tiny_pack) == len(models)
    for name in models:
        copy = mapped_model_path(tiny_pack / name, ["CUDAExecutionProvider"])
        assert copy is not None and copy.is_file() and (copy.parent / "weights.data").is_file()
    assert prepare_mapped_copies(tiny_pack) == 0  # already there


def test_conversion_needs_no_yolov5(tiny_pack: Path) -> None:
    """The dev environment has no yolov5 package: the conversion above used our modules."""
    if importlib.util.find_spec("yolov5") is not None:
        pytest.skip("yolov5 is installed here; the yolov5-free path is not exercised")
    fid = json.loads((tiny_pack / "fidelity.json").read_text())
    assert fid["detector"]["fp32"]["passed"] is True
    assert "yolov5" not in sys.modules


# --------------------------------------------------------------------------------------------
# pack logic with the framework converters replaced by copies of their outputs (fast)


@pytest.fixture()
def fake_converters(tiny_pack: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """run_in_child/convert_classifier copy the session pack's fp32 ONNX files instead."""
    import converters.pack as pack_mod

    info = json.loads((tiny_pack / "info.json").read_text())
    calls: list[str] = []

    def fake_child(target: str, src: Any, dst: Any, **_kw: Any) -> dict:
        calls.append(f"detector:{Path(src).name}")
        shutil.copyfile(tiny_pack / info["detector"], dst)
        return {"passed": True, "failures": []}

    def fake_classifier(src: Any, dst: Any, **_kw: Any) -> dict:
        calls.append(f"classifier:{Path(src).name}")
        shutil.copyfile(tiny_pack / info["classifier"], dst)
        return {"failures": []}

    monkeypatch.setattr(pack_mod, "run_in_child", fake_child)
    monkeypatch.setattr(pack_mod, "convert_classifier", fake_classifier)
    return {"calls": calls}


def _copy_source(tiny_source: Path, dst: Path) -> Path:
    shutil.copytree(tiny_source, dst)
    return dst


@pytest.mark.convert
def test_existing_destination_needs_force(tiny_source: Path, tmp_path: Path,
                                          fake_converters: dict) -> None:
    from converters.pack import convert_pack

    dst = tmp_path / "pack"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(PackError, match="exists"):
        convert_pack(tiny_source, dst, variants=())
    assert (dst / "keep.txt").read_text() == "mine" and fake_converters["calls"] == []
    convert_pack(tiny_source, dst, variants=(), overwrite=True, max_images=1)
    assert not (dst / "keep.txt").exists() and (dst / "info.json").is_file()
    assert sorted(fake_converters["calls"]) == sorted([
        "detector:md_v5a_synth_tiny.pt", "classifier:always_crop_synth_tiny.pt",
        "classifier:always_crop_synth_tiny.keras", "classifier:always_crop_synth_tiny.h5"])
    assert [p.name for p in tmp_path.iterdir()] == ["pack"]


@pytest.mark.convert
def test_label_count_mismatch_fails_and_leaves_nothing(tiny_source: Path, tmp_path: Path,
                                                       fake_converters: dict) -> None:
    from converters.pack import convert_pack

    src = _copy_source(tiny_source, tmp_path / "src")
    info = json.loads((src / "info.json").read_text())
    labels = src / info["classifier_labels"]
    labels.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PackError, match="2498 outputs but the labels file has 2497"):
        convert_pack(src, out / "pack", variants=(), max_images=1)
    assert list(out.iterdir()) == []


@pytest.mark.convert
def test_failing_conversion_leaves_no_half_pack(tiny_source: Path, tmp_path: Path,
                                                fake_converters: dict,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import converters.pack as pack_mod

    def broken(src: Any, dst: Any, **_kw: Any) -> dict:
        Path(dst).write_bytes(b"half")  # a converter that dies after writing something
        raise pack_mod.ConvertError("simulated converter failure", path=src)

    monkeypatch.setattr(pack_mod, "convert_classifier", broken)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(EdgenetError, match="simulated"):
        pack_mod.convert_pack(tiny_source, out / "pack", variants=(), max_images=1)
    assert list(out.iterdir()) == []


@pytest.mark.convert
def test_twin_that_disagrees_is_refused(tiny_source: Path, tmp_path: Path,
                                        fake_converters: dict,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnx import numpy_helper

    import converters.pack as pack_mod

    real = pack_mod.convert_classifier

    def other_weights(src: Any, dst: Any, **kw: Any) -> dict:
        rep = real(src, dst, **kw)
        if Path(src).suffix == ".h5":
            model = onnx.load(str(dst))
            for init in model.graph.initializer:  # perturb the biggest weight tensor
                arr = numpy_helper.to_array(init)
                if arr.size > 100_000:
                    init.CopyFrom(numpy_helper.from_array(arr[::-1].copy(), init.name))
                    break
            onnx.save(model, str(dst))
        return rep

    monkeypatch.setattr(pack_mod, "convert_classifier", other_weights)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(EdgenetError, match="disagree"):
        pack_mod.convert_pack(tiny_source, out / "pack", variants=(), max_images=2)
    assert list(out.iterdir()) == []


def test_source_folder_errors(tmp_path: Path) -> None:
    from converters.pack import convert_pack

    with pytest.raises(PackError, match="no info.json"):
        convert_pack(tmp_path, tmp_path / "p")
    (tmp_path / "info.json").write_text(json.dumps({"version": "1", "type": "always_crop"}))
    with pytest.raises(PackError, match="lacks classifier, classifier_labels, detector"):
        convert_pack(tmp_path, tmp_path / "p")
    info = {"version": "1", "type": "always_crop", "classifier": "c.pt",
            "classifier_labels": "l.txt", "detector": "../outside.pt", "taxonomy": "t.txt",
            "geofence": "g.json"}
    (tmp_path / "info.json").write_text(json.dumps(info))
    with pytest.raises(PackError, match="outside the model folder"):
        convert_pack(tmp_path, tmp_path / "p")
    info["detector"] = "md.pt"
    (tmp_path / "info.json").write_text(json.dumps(info))
    with pytest.raises(PackError, match="detector checkpoint named by info.json not found"):
        convert_pack(tmp_path, tmp_path / "p")
    with pytest.raises(EdgenetError, match="unknown variant"):
        convert_pack(tmp_path, tmp_path / "p", variants=("int4",))
    assert not (tmp_path / "p").exists()


def test_detector_url_offline_is_a_clear_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from converters.pack import convert_pack

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("EDGENET_MD_BASE_URL", f"http://127.0.0.1:{port}/md")
    monkeypatch.setenv("EDGENET_HOME", str(tmp_path / "home"))
    info = {"version": "1", "type": "always_crop", "classifier": "c.pt",
            "classifier_labels": "l.txt", "taxonomy": "t.txt", "geofence": "g.json",
            "detector": "https://github.com/agentmorris/MegaDetector/releases/download/v5.0/"
                        "md_v5a.0.0.pt"}
    src = tmp_path / "src"
    src.mkdir()
    (src / "info.json").write_text(json.dumps(info))
    with pytest.raises(EdgenetError, match="cannot reach"):
        convert_pack(src, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_cli_is_import_light() -> None:
    code = ("import sys, converters.cli; "
            "heavy = [m for m in ('torch', 'tensorflow', 'onnx', 'tf2onnx', 'onnx2torch') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_convert_cli_errors_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from converters.cli import convert_app, models_app

    runner = CliRunner()
    res = runner.invoke(convert_app, ["pack", str(tmp_path), str(tmp_path / "p")])
    assert res.exit_code == 2 and "no info.json" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(convert_app, ["pack", str(tmp_path), str(tmp_path / "p"),
                                      "--variants", "fp8"])
    assert res.exit_code == 2 and "unknown variant" in res.output
    res = runner.invoke(models_app, ["synth", str(tmp_path / "s"), "--size", "huge"])
    assert res.exit_code == 2 and "unknown size" in res.output
    res = runner.invoke(convert_app, ["classifier", str(tmp_path / "x.onnx"),
                                      str(tmp_path / "y.onnx")])
    assert res.exit_code == 2 and "not found" in res.output


@pytest.mark.convert
def test_convert_cli_pack_summary(tiny_source: Path, tmp_path: Path,
                                  fake_converters: dict) -> None:
    from typer.testing import CliRunner

    from converters.cli import convert_app

    res = CliRunner().invoke(convert_app, ["pack", str(tiny_source), str(tmp_path / "p"),
                                           "--variants", "fp16", "--max-images", "1"])
    assert res.exit_code == 0, res.output
    assert "fp16: detector recall" in res.output and "synthetic: True" in res.output


@pytest.mark.reference
@pytest.mark.convert
def test_speciesnet_runs_the_synthetic_folder(tiny_source: Path, ref_python: Path,
                                              speciesnet_images: Path) -> None:
    """speciesnet 5.0.6 itself loads the synthetic folder and runs detector and classifier."""
    script = f"""
import json, sys
from speciesnet.detector import SpeciesNetDetector
from speciesnet.classifier import SpeciesNetClassifier
from speciesnet.utils import load_rgb_image, BBox
img_path = {str(speciesnet_images / "african_elephants.jpg")!r}
det = SpeciesNetDetector({str(tiny_source)!r})
img = load_rgb_image(img_path)
d = det.predict(img_path, det.preprocess(img))
cls = SpeciesNetClassifier({str(tiny_source)!r})
boxes = [BBox(0.1, 0.1, 0.5, 0.5), BBox(0.5, 0.3, 0.3, 0.4)]
c = cls.batch_predict([img_path], [cls.preprocess(img, boxes)])[0]
print(json.dumps({{"n_det": len(d.get("detections", [])), "cls": c}}))
"""
    proc = subprocess.run([str(ref_python), "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n_det"] > 0, "the synthetic detector finds something in a real photo"
    assert "failures" not in out["cls"]
    crops = out["cls"]["classifications_list"]
    assert len(crops) == 2 and all(len(c["classes"]) == 5 for c in crops)


def test_generated_labels_and_geofence_are_consistent() -> None:
    """Fast check of the generated label set (no frameworks): specials, uniqueness,
    ancestors in the taxonomy, a geofence with allow and block rules on known taxa."""
    from converters.synth import generate_labels, make_geofence

    labels, taxonomy = generate_labels(300, seed=3)
    assert len(labels) == 300 and len(set(labels)) == 300
    assert len({lb.split(";")[0] for lb in taxonomy}) == len(taxonomy)  # unique UUIDs
    assert "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank" in labels
    assert "990ae9dd-7a59-4344-afcb-1b7b21368000;mammalia;primates;hominidae;homo;sapiens;human" \
        in labels
    assert set(labels) <= set(taxonomy)
    taxa = {";".join(t.split(";")[1:6]) for t in taxonomy}
    levels = {"species": 0, "genus": 0, "higher": 0}
    for lb in labels:
        f = lb.split(";")
        if f[5]:
            levels["species"] += 1
            for depth in range(1, 5):  # genus, family, order, class ancestors
                assert ";".join(f[1:1 + depth] + [""] * (5 - depth)) in taxa, lb
        elif f[4]:
            levels["genus"] += 1
        elif f[1]:
            levels["higher"] += 1
    assert levels["species"] > 200 and levels["genus"] > 0 and levels["higher"] > 0
    assert generate_labels(300, seed=3) == (labels, taxonomy)  # reproducible
    geofence = make_geofence(labels, seed=0, n_rules=40)
    kinds = {k for rule in geofence.values() for k in rule}
    assert kinds == {"allow", "block"}
    for key, rule in geofence.items():
        assert key in taxa
        for countries in rule.values():
            assert all(len(c) == 3 for c in countries)
