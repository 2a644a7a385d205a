"""SpeciesNet classifier converters: synthetic Keras 3 / Keras 2 / onnx2torch files -> ONNX.

TensorFlow and torch never load in this process (they segfault together here, and other test
modules may import either): the converters run them in child interpreters, and this module
checks their outputs with onnxruntime only. One tiny synthetic build is shared per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
for _mod in ("tensorflow", "tf_keras", "tf2onnx", "torch", "onnx2torch"):
    if subprocess.run([sys.executable, "-c", f"import importlib.util as u; "
                       f"raise SystemExit(u.find_spec('{_mod}') is None)"]).returncode:
        pytest.skip(f"convert extra not installed ({_mod} missing)", allow_module_level=True)

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from converters.classifier_keras import (  # noqa: E402
    convert_keras_classifier,
    detect_keras_format,
)
from converters.classifier_torch import convert_torch_classifier  # noqa: E402
from converters.efficientnet import (  # noqa: E402
    FP32_REL_TOLERANCE,
    compare_logits,
    fidelity_failures,
    load_crops,
)
from converters.errors import ConvertError  # noqa: E402
from converters.synth_classifier import build_synthetic_classifier  # noqa: E402
from edgenet.errors import EdgenetError  # noqa: E402

pytestmark = pytest.mark.convert

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IMAGES = SHARED / "images" / "speciesnet_test_data"
NUM_LABELS = 37  # deliberately not 2498: the output width must follow the model, not a constant


def _images() -> list[Path]:
    if not IMAGES.is_dir():
        return []
    return sorted(p for p in IMAGES.glob("*.jpg") if "truncated" not in p.name)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny build (.keras, .h5, .pt) for the whole module."""
    dst = tmp_path_factory.mktemp("synth_cls")
    info = build_synthetic_classifier(dst, "tiny", NUM_LABELS, _images(), seed=3)
    info["dir"] = dst
    return info


@pytest.fixture(scope="module")
def converted(synth: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each synthetic source converted once; reports and ONNX paths by source kind."""
    out = tmp_path_factory.mktemp("onnx_cls")
    paths = {k: Path(v) for k, v in synth["paths"].items()}
    jobs = {
        "keras": (convert_keras_classifier, paths["keras"]),
        "h5": (convert_keras_classifier, paths["h5"]),
        "pt": (convert_torch_classifier, paths["pt"]),
    }
    # Each conversion is a child interpreter; run them side by side (the machine has 2 cores).
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(fn, src, out / f"{k}.onnx") for k, (fn, src) in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def _run(path: str | Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


#: Different subjects (the test folder also holds b/w, CMYK and EXIF copies of one photo).
DIVERSE = ["ocelot.jpg", "domestic_cattle.jpg", "human.jpg", "american_black_bear.jpg"]


def _real_batch(n: int = 3) -> np.ndarray:
    imgs = _images()
    diverse = [p for name in DIVERSE for p in imgs if p.name == name]
    crops = load_crops(diverse + [p for p in imgs if p not in diverse], limit=n)
    if not len(crops):
        rng = np.random.default_rng(0)
        return rng.uniform(0, 1, (n, 480, 480, 3)).astype(np.float32)
    return (crops.astype(np.float32) / 255.0).astype(np.float32)


# ----------------------------------------------------------------------------- pure numpy


def test_compare_logits_flags_real_differences() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 5, (4, 50)).astype(np.float32)
    same = compare_logits(ref, ref + 1e-6)
    assert same["top1_agreement"] == 1.0 and same["top5_agreement"] == 1.0
    assert fidelity_failures(same) == []
    broken = ref.copy()
    broken[:, 0] = ref.max() + 10  # a wrong op that makes class 0 win everywhere
    cmp = compare_logits(ref, broken)
    probs = fidelity_failures(cmp)
    assert cmp["top1_agreement"] < 1.0
    assert any("relative" in p for p in probs) and any("top-1" in p for p in probs)


def test_detect_format_rejects_non_model(tmp_path: Path) -> None:
    bogus = tmp_path / "model.keras"
    bogus.write_bytes(b"not a model at all")
    with pytest.raises(ConvertError) as err:
        detect_keras_format(bogus)
    assert isinstance(err.value, EdgenetError)
    assert "model.keras" in str(err.value)
    with pytest.raises(ConvertError):
        convert_keras_classifier(tmp_path / "missing.h5", tmp_path / "o.onnx")
    with pytest.raises(ConvertError):
        convert_torch_classifier(tmp_path / "missing.pt", tmp_path / "o.onnx")


def test_torch_converter_rejects_non_module(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ConvertError) as err:
        convert_torch_classifier(bad, tmp_path / "o.onnx")
    assert "weights.pt" in str(err.value)
    assert not (tmp_path / "o.onnx").exists()


# ----------------------------------------------------------------------------- synthetic build


def test_synth_writes_three_formats(synth: dict) -> None:
    d = synth["dir"]
    assert set(synth["files"]) == {"keras", "h5", "pt"}
    for name in synth["files"].values():
        assert (d / name).stat().st_size > 100_000
    assert detect_keras_format(Path(synth["paths"]["keras"])) == "keras3"
    assert detect_keras_format(Path(synth["paths"]["h5"])) == "keras2"
    assert synth["num_labels"] == NUM_LABELS
    # No leftover work folders next to the outputs.
    assert sorted(p.name for p in d.iterdir()) == sorted(synth["files"].values())


def test_synth_is_conditioned_like_a_trained_model(synth: dict) -> None:
    cal = synth["calibration"]
    assert cal["batchnorm_layers"] >= 10
    assert 0.3 < cal["top1_prob"]["median"] < 0.9
    assert cal["top1_prob"]["max"] > cal["top1_prob"]["min"]
    assert cal["distinct_top1"] >= 3  # different images -> different top classes
    assert cal["damped_residual_branches"] >= 2 and cal["n_noise"] >= 1
    for group in ("photos", "noise"):
        drift = synth["drift_fp32_vs_fp64"][group]
        assert drift["max_rel_diff"] < 1e-4 and drift["top1_agreement"] == 1.0, group
    for key in ("h5_vs_keras", "pt_vs_keras"):
        assert synth[key]["max_rel_diff"] < FP32_REL_TOLERANCE, key
        assert synth[key]["top5_agreement"] == 1.0, key


# ----------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("kind", ["keras", "h5", "pt"])
def test_conversion_within_tolerance(converted: dict, kind: str) -> None:
    rep = converted[kind]
    assert rep["failures"] == []
    assert rep["num_labels"] == NUM_LABELS
    for group in ("all", "random"):
        cmp = rep["fidelity"][group]
        assert cmp["max_rel_diff"] < FP32_REL_TOLERANCE
        assert cmp["top1_agreement"] == 1.0 and cmp["top5_agreement"] == 1.0
    if _images():
        assert rep["fidelity"]["images"]["n"] >= 1
    expected = {"keras": "keras 3", "h5": "tf_keras 2", "pt": "torch"}[kind]
    assert rep["source_framework"].startswith(expected)


@pytest.mark.parametrize("kind", ["keras", "h5", "pt"])
def test_onnx_graph_contract(converted: dict, synth: dict, kind: str) -> None:
    path = converted[kind]["onnx"]
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgenet.num_labels"] == str(NUM_LABELS)
    assert meta["edgenet.source"] == synth["files"][kind]
    assert meta["edgenet.precision"] == "fp32"
    assert len(meta["edgenet.source_sha256"]) == 64
    assert "edgenet.fidelity" in meta and "edgenet.converter_versions" in meta
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.shape[1:] == [480, 480, 3] and not isinstance(inp.shape[0], int)
    for n in (1, 3):  # dynamic batch
        y = sess.run(None, {inp.name: _real_batch(n)})[0]
        assert y.shape == (n, NUM_LABELS) and np.isfinite(y).all()


def test_three_forms_agree(converted: dict) -> None:
    """Same weights in three formats -> three ONNX graphs that agree (independent check)."""
    x = _real_batch(4)
    ref = _run(converted["keras"]["onnx"], x)
    for kind in ("h5", "pt"):
        cmp = compare_logits(ref, _run(converted[kind]["onnx"], x))
        assert fidelity_failures(cmp) == [], (kind, cmp)
    # Real crops are classified differently from each other (not a constant head).
    assert len(set(ref.argmax(-1).tolist())) >= 2 or len(x) < 2


def test_keras2_dot_keras_zip_detected(tmp_path: Path) -> None:
    """Keras 2.13+ also writes `.keras` zips; the metadata, not the suffix, picks tf_keras."""
    import zipfile

    z = tmp_path / "old.keras"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "2.15.0"}))
        zf.writestr("config.json", "{}")
    assert detect_keras_format(z) == "keras2"


# ----------------------------------------------------------------------------- reference


def _reference_python() -> str | None:
    env = os.environ.get("EDGENET_REFERENCE_PYTHON")
    if env:
        return env if Path(env).exists() else None
    default = Path("/work/refvenv/bin/python")
    return str(default) if default.exists() else None


_REF_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
import PIL.Image
from speciesnet.classifier import SpeciesNetClassifier
from speciesnet.utils import BBox

folder, image, out = sys.argv[1], sys.argv[2], sys.argv[3]
clf = SpeciesNetClassifier(folder, device="cpu")
img = PIL.Image.open(image).convert("RGB")
crops = clf.preprocess(img, bboxes=[BBox(0.1, 0.2, 0.6, 0.5)])
res = clf.predict(image, crops, num_classes=5)
import torch
with torch.no_grad():
    logits = clf.model(torch.from_numpy(crops[0].arr[None] / 255.0).float()).numpy()
np.save(out + ".crop.npy", crops[0].arr)
np.save(out + ".logits.npy", logits)
Path(out).write_text(json.dumps(res))
"""


@pytest.mark.reference
def test_speciesnet_loads_and_runs_synth_pt(synth: dict, converted: dict, tmp_path: Path) -> None:
    """speciesnet 5.0.6's own loader runs the synthetic .pt; our ONNX matches what it computes."""
    py = _reference_python()
    if py is None:
        pytest.skip("reference python not found (set EDGENET_REFERENCE_PYTHON)")
    images = _images()
    if not images:
        pytest.skip("shared images absent")
    folder = tmp_path / "model"
    folder.mkdir()
    pt = Path(synth["paths"]["pt"])
    (folder / pt.name).symlink_to(pt)
    labels = [f"uuid{i};class;order;family;genus;species{i};name {i}" for i in range(NUM_LABELS)]
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "info.json").write_text(json.dumps({
        "version": "synth", "type": "always_crop", "classifier": pt.name,
        "classifier_labels": "labels.txt", "detector": "none.pt",
        "taxonomy": "taxonomy.txt", "geofence": "geofence.json"}))
    out = tmp_path / "ref.json"
    proc = subprocess.run([py, "-c", _REF_SCRIPT, str(folder), str(images[0]), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    crop = np.load(str(out) + ".crop.npy")
    ref_logits = np.load(str(out) + ".logits.npy")
    (cls,) = res["classifications_list"] if "classifications_list" in res else [None]
    x = (crop[None].astype(np.float32) / 255.0).astype(np.float32)
    for kind in ("pt", "keras"):
        ours = _run(converted[kind]["onnx"], x)
        cmp = compare_logits(ref_logits, ours)
        assert fidelity_failures(cmp) == [], (kind, cmp)
        top5 = [labels[i] for i in np.argsort(-ours[0])[:5]]
        if cls is not None:
            assert top5 == cls["classes"]


# ----------------------------------------------------------------------------- slow

_EXPORT_SAVEDMODEL = r"""
import sys
import keras
model = keras.models.load_model(sys.argv[1], compile=False)
model.export(sys.argv[2], format="tf_saved_model")
"""


@pytest.mark.slow
def test_savedmodel_directory_converts(synth: dict, converted: dict, tmp_path: Path) -> None:
    """A TF SavedModel export of the same weights converts and matches the .keras graph."""
    sm = tmp_path / "saved_model"
    proc = subprocess.run([sys.executable, "-c", _EXPORT_SAVEDMODEL, synth["paths"]["keras"],
                           str(sm)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert detect_keras_format(sm) == "savedmodel"
    rep = convert_keras_classifier(sm, tmp_path / "sm.onnx")
    assert rep["failures"] == [] and rep["num_labels"] == NUM_LABELS
    x = _real_batch(2)
    cmp = compare_logits(_run(converted["keras"]["onnx"], x), _run(tmp_path / "sm.onnx", x))
    assert fidelity_failures(cmp) == [], cmp


@pytest.mark.slow
def test_full_size_build_and_convert(tmp_path: Path) -> None:
    """EfficientNetV2-M with 2498 outputs: all three formats convert within tolerance."""
    info = build_synthetic_classifier(tmp_path, "full", 2498, _images())
    assert info["params"] > 50_000_000
    for group in ("photos", "noise"):
        assert info["drift_fp32_vs_fp64"][group]["max_rel_diff"] < 1e-4
    paths = {k: Path(v) for k, v in info["paths"].items()}
    for kind, fn in (("keras", convert_keras_classifier), ("h5", convert_keras_classifier),
                     ("pt", convert_torch_classifier)):
        rep = fn(paths[kind], tmp_path / f"{kind}.onnx")
        assert rep["failures"] == [] and rep["num_labels"] == 2498, kind
