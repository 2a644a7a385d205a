"""MegaDetector side of the converters: synthetic checkpoint -> load without yolov5 -> ONNX.

Default tests use the tiny synthetic model (every YOLOv5x6 layer type, ~200k parameters);
the full-size YOLOv5x6 build is `-m slow`; the checks against yolov5's own classes and the
speciesnet detector run in the reference venv (`-m reference`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from converters.detector import (  # noqa: E402
    convert_detector,
    letterbox_rgb,
    load_rgb,
    to_nchw,
    yolov5_nms,
)
from converters.errors import ConvertError  # noqa: E402
from converters.synth_detector import build_synthetic_megadetector  # noqa: E402
from converters.yolo_modules import (  # noqa: E402
    CheckpointError,
    _pickle_module,
    load_checkpoint,
    save_checkpoint,
    yolov5_names_in_pickle,
)

pytestmark = pytest.mark.convert

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = Path(os.environ.get("EDGENET_SHARED_DIR", REPO_ROOT.parent / "shared")) / "images"


def _real_images() -> list[Path]:
    """Real camera-trap images, day and night, or [] (generated scenes are used then)."""
    names = ["speciesnet_test_data/african_elephants.jpg", "speciesnet_test_data/ocelot.jpg",
             "speciesnet_test_data/human.jpg", "camera_trap_extra/md_idaho_cougar.jpg",
             "camera_trap_extra/animl_jaguar_night.jpg", "speciesnet_test_data/blank.jpg"]
    return [SHARED_IMAGES / n for n in names if (SHARED_IMAGES / n).is_file()]


def _reference_python() -> Path | None:
    env = os.environ.get("EDGENET_REFERENCE_PYTHON")
    cand = Path(env) if env else Path("/work/refvenv/bin/python")
    return cand if cand.exists() else None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("md") / "md_tiny.pt"
    info = build_synthetic_megadetector(dst, "tiny", _real_images(), seed=0)
    return dst, info


@pytest.fixture(scope="module")
def tiny_onnx(tiny: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("onnx") / "md_tiny.onnx"
    report = convert_detector(tiny[0], dst, check_images=_real_images()[:2])
    return dst, report


def test_checkpoint_is_in_megadetector_format(tiny: tuple[Path, dict]) -> None:
    path, info = tiny
    names = yolov5_names_in_pickle(path)
    for expected in ("models.yolo.DetectionModel", "models.yolo.Detect", "models.common.Conv",
                     "models.common.C3", "models.common.Bottleneck", "models.common.SPPF",
                     "models.common.Concat", "torch.nn.modules.upsampling.Upsample"):
        assert expected in names
    assert not [n for n in names if "converters" in n or "edgenet" in n]
    ckpt = torch.load(path, map_location="cpu", weights_only=False,
                      pickle_module=_pickle_module("DetectionModel"))
    assert ckpt["epoch"] == -1 and ckpt["optimizer"] is None and ckpt["ema"] is None
    params = list(ckpt["model"].parameters())
    assert {p.dtype for p in params} == {torch.float16}  # stored like MegaDetector's releases
    assert info["stored_dtype"] == "float16"
    det = ckpt["model"].model[-1]
    assert det.nl == 4 and det.na == 3 and det.nc == 3
    assert [int(s) for s in det.stride] == [8, 16, 32, 64]
    assert [type(m).__name__ for m in ckpt["model"].model].count("Upsample") == 3


def test_loads_without_yolov5_as_fp32(tiny: tuple[Path, dict]) -> None:
    path, _ = tiny
    load_info: dict = {}
    model = load_checkpoint(path, info=load_info)
    assert load_info["stored_dtypes"] == ["float16"]
    assert load_info["classes"] == "edgenet"
    assert type(model).__module__ == "converters.yolo_modules"
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    x = torch.rand(2, 3, 192, 320)
    with torch.no_grad():
        out = model(x)[0]
    rows = 3 * sum((192 // s) * (320 // s) for s in (8, 16, 32, 64))
    assert out.shape == (2, rows, 8)
    assert torch.all((out[..., 4:] >= 0) & (out[..., 4:] <= 1))
    assert torch.all(out[..., 2:4] > 0)


def test_handful_of_boxes_that_follow_the_image(tiny: tuple[Path, dict]) -> None:
    _, info = tiny
    counts = info["boxes_per_image_at_0.1"]
    assert len(counts) >= 2
    # The offset targets the median calibration image; random features scale with image
    # contrast, so bright day shots get more boxes than infrared night shots.
    assert 1 <= max(counts) < 300, counts  # some boxes, never NMS's max_det (saturated)
    assert float(np.median(counts)) <= 20, counts
    images = _real_images()
    if len(images) < 2:
        pytest.skip("needs two real images")
    model = load_checkpoint(tiny[0])
    boxes = []
    for p in images[:2]:
        x = to_nchw(letterbox_rgb(load_rgb(p)))
        with torch.no_grad():
            boxes.append(yolov5_nms(model(torch.from_numpy(x))[0][0].numpy()))
    a, b = boxes
    assert len(a) != len(b) or not np.allclose(a[:, :5], b[:, :5])


def test_fp32_vs_fp64_drift_is_small(tiny: tuple[Path, dict]) -> None:
    drift = tiny[1]["fp32_vs_fp64"]
    assert drift["raw"]["max_rel"] < 1e-4
    assert drift["detections"]["unmatched_at_or_above_min_conf"] == 0
    assert drift["detections"]["max_conf_abs"] < 5e-5
    # 0.05 px at a 1280 input is 4e-5 of the image: 25x inside the 1e-3 bbox tolerance the
    # comparison with the reference uses.
    assert drift["detections"]["max_box_abs_px"] < 5e-2


def test_convert_matches_torch(tiny_onnx: tuple[Path, dict], tiny: tuple[Path, dict]) -> None:
    import onnx
    import onnxruntime as ort

    path, report = tiny_onnx
    assert report["passed"] and not report["failures"]
    tol = report["tolerance"]
    assert report["onnx_vs_torch32"]["max_rel"] <= tol["effective_raw_max_rel"]
    assert tol["effective_raw_max_rel"] >= tol["raw_max_rel"]
    assert report["source_sha256"] and report["converter_versions"]["torch"]
    if report["images"]:
        assert report["detections_onnx_vs_torch32"]["unmatched_at_or_above_min_conf"] == 0
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["edgenet.source_file"] == tiny[0].name
    assert meta["edgenet.precision"] == "fp32"
    assert json.loads(meta["edgenet.converter_versions"])["onnx"] == onnx.__version__
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "images" and inp.type == "tensor(float)"
    assert out.name == "predictions" and isinstance(out.shape[1], str)
    assert isinstance(inp.shape[0], str) and isinstance(inp.shape[2], str)
    assert isinstance(inp.shape[3], str) and inp.shape[1] == 3
    # A shape and batch the export never saw.
    coarse = torch.rand(3, 3, 14, 4, generator=torch.Generator().manual_seed(1))
    x = torch.nn.functional.interpolate(coarse, size=(448, 128), mode="bilinear").numpy()
    got = sess.run(None, {"images": x})[0]
    with torch.no_grad():
        want = load_checkpoint(tiny[0])(torch.from_numpy(x))[0].numpy()
    assert got.shape == want.shape == (3, 3 * sum((448 // s) * (128 // s) for s in
                                                  (8, 16, 32, 64)), 8)
    assert np.abs(got[..., :4] - want[..., :4]).max() < 448 * 1e-4
    assert np.abs(got[..., 4:] - want[..., 4:]).max() < 1e-4


def test_convert_refuses_a_wrong_graph(tiny: tuple[Path, dict], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import converters.detector as det_mod

    real = det_mod._export_module

    def shifted(model):  # a conversion bug: boxes off by half a pixel
        inner = real(model)

        class Shift(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x):
                y = self.inner(x)
                return torch.cat((y[..., :4] + 0.5, y[..., 4:]), -1)

        return Shift()

    monkeypatch.setattr(det_mod, "_export_module", shifted)
    dst = tmp_path / "bad.onnx"
    with pytest.raises(ConvertError, match="differ"):
        convert_detector(tiny[0], dst, check_images=[])
    assert not dst.exists() and not list(tmp_path.iterdir())


def test_fp32_checkpoint_and_old_model_class_name(tiny: tuple[Path, dict], tmp_path: Path
                                                  ) -> None:
    model16 = load_checkpoint(tiny[0])
    src = tmp_path / "md_fp32.pt"
    save_checkpoint({"model": model16, "epoch": -1}, src, model_class_name="Model")
    assert "models.yolo.Model" in yolov5_names_in_pickle(src)
    info: dict = {}
    model32 = load_checkpoint(src, info=info)
    assert info["stored_dtypes"] == ["float32"]
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        assert torch.equal(model16(x)[0], model32(x)[0])


def test_bad_checkpoints_raise_clear_errors(tmp_path: Path, tiny: tuple[Path, dict]) -> None:
    from converters.yolo_modules import _resolve_yolov5_class

    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny[0].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(truncated)
    weights_only = tmp_path / "state_dict.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, weights_only)
    with pytest.raises(CheckpointError, match="no YOLOv5 model"):
        load_checkpoint(weights_only)
    with pytest.raises(CheckpointError, match="GhostConv"):
        _resolve_yolov5_class("models.common", "GhostConv")


def test_old_yolov5_attributes_are_patched(tiny: tuple[Path, dict], tmp_path: Path) -> None:
    model = load_checkpoint(tiny[0])
    for m in model.modules():
        if isinstance(m, torch.nn.Upsample):
            del m.recompute_scale_factor  # pickled by torch < 1.11
    det = model.model[-1]
    del det.inplace
    src = tmp_path / "old.pt"
    save_checkpoint({"model": model.half()}, src)
    info: dict = {}
    loaded = load_checkpoint(src, info=info)
    # Recent torch restores the attribute in Upsample.__setstate__; older torch needs our patch.
    assert all(hasattr(m, "recompute_scale_factor") for m in loaded.modules()
               if isinstance(m, torch.nn.Upsample))
    with torch.no_grad():
        assert loaded(torch.rand(1, 3, 128, 128))[0].shape[-1] == 8


@pytest.mark.slow
def test_full_size_build_and_convert(tmp_path: Path) -> None:
    src = tmp_path / "md_v5a_synth.pt"
    info = build_synthetic_megadetector(src, "full", _real_images(), seed=0)
    assert 130e6 < info["parameters"] < 150e6
    assert 1 <= max(info["boxes_per_image_at_0.1"]) < 300
    assert info["fp32_vs_fp64"]["raw"]["max_rel"] < 1e-4
    report = convert_detector(src, tmp_path / "md.onnx", check_images=_real_images()[:1])
    assert report["passed"]


# --------------------------------------------------------------------------------------------
# reference venv (yolov5 7.0.11, speciesnet 5.0.6)


_REF_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    import yolov5  # noqa: F401 - puts yolov5's `models` package on sys.path, as speciesnet
    src, images, folder = Path(sys.argv[1]), sys.argv[2:-1], Path(sys.argv[-1])
    model = torch.load(src, map_location="cpu", weights_only=False)["model"].float().eval()
    assert type(model).__module__ == "models.yolo", type(model)
    x = torch.from_numpy(np.load(folder / "x.npy"))
    with torch.no_grad():
        np.save(folder / "yolov5_out.npy", model(x)[0].numpy())
    from speciesnet.detector import SpeciesNetDetector
    from PIL import Image
    det = SpeciesNetDetector(str(folder))
    out = {}
    for p in images:
        img = Image.open(p); img.load(); img = img.convert("RGB")
        out[p] = det.predict(p, det.preprocess(img))["detections"]
    print(json.dumps(out))
""")


@pytest.mark.reference
def test_yolov5_and_speciesnet_run_the_synthetic_checkpoint(tiny: tuple[Path, dict],
                                                           tiny_onnx: tuple[Path, dict],
                                                           tmp_path: Path) -> None:
    ref = _reference_python()
    if ref is None:
        pytest.skip("reference python absent (set EDGENET_REFERENCE_PYTHON)")
    images = _real_images()[:2]
    if not images:
        pytest.skip("needs real images")
    src, _ = tiny
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / src.name).write_bytes(src.read_bytes())
    (folder / "info.json").write_text(json.dumps({
        "version": "synthetic", "type": "always_crop", "classifier": "none.pt",
        "classifier_labels": "labels.txt", "detector": src.name,
        "taxonomy": "taxonomy.txt", "geofence": "geofence.json"}))
    x = np.random.default_rng(3).random((2, 3, 256, 192), dtype=np.float32)
    np.save(folder / "x.npy", x)
    proc = subprocess.run(
        [str(ref), "-c", _REF_SCRIPT, str(src), *map(str, images), str(folder)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # yolov5's own classes compute exactly what ours compute.
    with torch.no_grad():
        ours = load_checkpoint(src)(torch.from_numpy(x))[0].numpy()
    assert np.array_equal(np.load(folder / "yolov5_out.npy"), ours)
    # speciesnet's detector on the checkpoint == edgenet's runtime on the converted graph.
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    try:
        from edgenet.detector import DetectorModel
        from edgenet.images import load_rgb_image
    except ImportError:
        pytest.skip("edgenet.detector not available")
    onnx_det = DetectorModel(tiny_onnx[0], device="cpu")
    assert any(reference[str(p)] for p in images), "speciesnet found no detections at all"
    for p in images:
        want = reference[str(p)]
        got = onnx_det.detect(load_rgb_image(str(p)))
        assert [d["category"] for d in got] == [d["category"] for d in want]
        for g, w in zip(got, want, strict=True):
            assert abs(g["conf"] - w["conf"]) < 1e-4
            assert np.allclose(g["bbox"], w["bbox"], atol=2e-3)


_YOLOV5_WRITES = textwrap.dedent("""
    # Runs in the reference venv: yolov5's own code builds and saves the checkpoint.
    import copy, sys
    from datetime import datetime
    from pathlib import Path
    import numpy as np, torch, yaml
    import yolov5
    from models.yolo import DetectionModel
    dst, folder = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = yaml.safe_load((Path(yolov5.__file__).parent / "models/hub/yolov5x6.yaml").read_text())
    cfg.update(nc=3, depth_multiple=0.33, width_multiple=0.0625)  # YOLOv5x6 layout, tiny
    torch.manual_seed(0)
    model = DetectionModel(cfg)
    model.train()  # a few batches of BN statistics, so activations stay finite
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 256, 256))
    model.eval()
    model.names = ["animal", "person", "vehicle"]
    # What yolov5's train.py saves (MegaDetector's release files are such dicts, fp16).
    torch.save({"epoch": -1, "best_fitness": None, "model": copy.deepcopy(model).half(),
                "ema": None, "updates": None, "optimizer": None, "opt": {}, "git": None,
                "date": datetime.now().isoformat()}, dst)
    loaded = torch.load(dst, map_location="cpu", weights_only=False)["model"].float().eval()
    x = torch.from_numpy(np.load(folder / "x.npy"))
    with torch.no_grad():
        np.save(folder / "yolov5_out.npy", loaded(x)[0].numpy())
    # A classifier .pt as SpeciesNet >= 4.0.1 ships it: a whole onnx2torch module.
    import onnx
    from onnx2torch import convert
    torch.save(convert(onnx.load(sys.argv[3])), folder / "classifier.pt")
""")

_CONVERT_WITH_YOLOV5 = textwrap.dedent("""
    # The dev interpreter with the reference venv's packages appended: yolov5 is installed.
    import json, sys
    sys.path.append(sys.argv[1])
    from converters.yolo_modules import _yolov5_available
    assert _yolov5_available()
    from converters.detector import convert_detector
    report = convert_detector(sys.argv[2], sys.argv[3], check_images=[], use_yolov5=True)
    from converters.pack import convert_pack
    convert_pack(sys.argv[4], sys.argv[5], variants=())
    print(json.dumps({"passed": report["passed"], "classes": report["source"]["classes"]}))
""")


@pytest.mark.reference
def test_checkpoint_written_by_yolov5_converts_with_and_without_yolov5(tmp_path: Path) -> None:
    """A YOLOv5x6-layout checkpoint saved by yolov5's own code, as MegaDetector's files are."""
    ref = _reference_python()
    if ref is None:
        pytest.skip("reference python absent (set EDGENET_REFERENCE_PYTHON)")
    site = subprocess.run([str(ref), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True
                          ).stdout.strip()
    src = tmp_path / "md_v5a_by_yolov5.pt"
    x = np.random.default_rng(5).random((1, 3, 320, 448), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    demo = Path(__file__).resolve().parents[1] / "edgenet" / "data" / "demo_pack"
    demo_info = json.loads((demo / "info.json").read_text())
    proc = subprocess.run([str(ref), "-c", _YOLOV5_WRITES, str(src), str(tmp_path),
                           str(demo / demo_info["classifier"])],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "models.yolo.DetectionModel" in yolov5_names_in_pickle(src)
    want = np.load(tmp_path / "yolov5_out.npy")

    import onnxruntime as ort

    def check(onnx_path: Path) -> None:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"images": x})[0]
        assert got.shape == want.shape
        # Boxes in pixels, objectness/class in [0, 1]: relative to each column's scale.
        scale = np.maximum(np.abs(want).max(axis=(0, 1)), 1.0)
        assert (np.abs(got - want).max(axis=(0, 1)) / scale).max() < 1e-3

    # A SpeciesNet model folder around the two files, as the reference reads it.
    folder = tmp_path / "speciesnet_folder"
    folder.mkdir()
    src.rename(folder / src.name)
    src = folder / src.name
    (tmp_path / "classifier.pt").rename(folder / "classifier.pt")
    for key in ("classifier_labels", "taxonomy", "geofence"):
        (folder / demo_info[key]).write_bytes((demo / demo_info[key]).read_bytes())
    (folder / "info.json").write_text(json.dumps({
        "version": "4.0.1a", "type": "always_crop", "classifier": "classifier.pt",
        "classifier_labels": demo_info["classifier_labels"], "detector": src.name,
        "taxonomy": demo_info["taxonomy"], "geofence": demo_info["geofence"]}))

    # Without yolov5 (this interpreter has no yolov5): our unpickler's modules.
    proc = subprocess.run([sys.executable, "-m", "edgenet.cli", "convert", "pack", str(folder),
                           str(tmp_path / "pack_without"), "--variants", "none"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from edgenet.pack import ModelPack

    assert ModelPack.load(tmp_path / "pack_without").version == "4.0.1a"
    without = tmp_path / "without.onnx"
    proc = subprocess.run([sys.executable, "-m", "edgenet.cli", "convert", "detector", str(src),
                           str(without)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check(without)
    # With yolov5 installed (the reference venv's packages appended): yolov5's own classes.
    with_ = tmp_path / "with.onnx"
    # (a sitecustomize appends them in the converter's child processes too)
    hook = tmp_path / "with_yolov5"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(f"import sys\nsys.path.append({site!r})\n")
    env = {**os.environ, "PYTHONPATH": str(hook)}
    proc = subprocess.run([sys.executable, "-c", _CONVERT_WITH_YOLOV5, site, str(src),
                           str(with_), str(folder), str(tmp_path / "pack_with")],
                          capture_output=True, text=True, timeout=900, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["passed"] and out["classes"] == "yolov5"
    check(with_)
    fid = json.loads((tmp_path / "pack_with" / "fidelity.json").read_text())
    # With yolov5 importable, `convert pack` also runs yolov5's own classes: identical outputs.
    assert fid["detector"]["fp32"]["yolov5_package_vs_edgenet_modules"]["max_abs"] == 0.0
    assert ModelPack.load(tmp_path / "pack_with").version == "4.0.1a"
