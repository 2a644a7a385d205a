"""`edgenet convert pack SRC DST`: a SpeciesNet model folder -> a ready edgenet pack.

SRC is what speciesnet 5.0.6 loads (`info.json` with version/type/classifier/classifier_labels/
detector/taxonomy/geofence; the detector may be a URL as in Kaggle's packages). DST gets:

    info.json       the speciesnet keys, now naming .onnx files, plus an "edgenet" section
                    (format, precision, synthetic flag, sha256 of every file, variants,
                    source file names and sha256, converter versions)
    <detector>.onnx, <classifier>.onnx           fp32, each proven against its source
    <...>.fp16.onnx, <...>.int8.onnx             variants, with their distance from fp32
    labels, taxonomy, geofence                   copied unchanged
    fidelity.json   every check's numbers

Why a temp folder: the pack is built in `.DST.tmp-*` next to DST and renamed into place only
when every conversion and check passed, so a failed or interrupted conversion never leaves a
half-written pack that `edgenet run` could pick up. The heavy frameworks are imported only
inside the converter functions (TensorFlow only in child processes: it segfaults next to
torch/onnx2torch here).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from converters.errors import ConvertError
from converters.onnx_meta import installed_versions, stamp_onnx_file
from edgenet.errors import EdgenetError, PackError

PACK_FORMAT = 1
SPECIESNET_KEYS = ("version", "type", "classifier", "classifier_labels", "detector", "taxonomy",
                   "geofence")
KERAS_SUFFIXES = {".keras", ".h5", ".hdf5"}
TORCH_SUFFIXES = {".pt", ".pth"}
KERAS_TWIN_KEY = "edgenet_keras_classifier"
SYNTH_KEY = "edgenet_synthetic"
VARIANTS = ("fp16", "int8")
FIDELITY_NAME = "fidelity.json"
# A Keras twin of the primary classifier holds the same weights; their ONNX graphs must agree
# on top-1 and to this relative logit difference (two exporters, two fp32 runtimes).
TWIN_REL_TOLERANCE = 1e-3

LogFn = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# helpers


def sha256_file(path: Path) -> str:
    """sha256 of a file; of a folder (a SavedModel), over its sorted (name, file sha256) list."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{sub.relative_to(path).as_posix()}\0{sha256_file(sub)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def converter_versions() -> dict[str, str]:
    """Installed versions of everything that can touch a conversion (no imports needed)."""
    return installed_versions(("edgenet", "torch", "onnx", "onnxruntime", "onnxruntime-gpu",
                               "onnx2torch", "tf2onnx", "tensorflow-cpu", "tensorflow", "keras",
                               "tf-keras", "numpy", "yolov5"))


def _quiet(_msg: str) -> None:
    return None


def _inside(root: Path, rel: str, what: str) -> Path:
    """ROOT/REL, refusing names that leave ROOT (info.json is user-supplied)."""
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise PackError(f"info.json {what} {rel!r} points outside the model folder", path=root)
    return path


def read_source_info(src: Path) -> dict[str, Any]:
    """The SpeciesNet info.json of SRC, checked for the keys speciesnet reads."""
    info_path = Path(src) / "info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError("no info.json: not a SpeciesNet model folder", path=src,
                        fix="pass the folder that holds info.json (e.g. a Kaggle download)"
                        ) from None
    except json.JSONDecodeError as exc:
        raise PackError(f"info.json is not valid JSON ({exc})", path=info_path) from None
    missing = [k for k in SPECIESNET_KEYS if not isinstance(info.get(k), str) or not info[k]]
    if missing:
        raise PackError(f"info.json lacks {', '.join(missing)}", path=info_path,
                        fix="a SpeciesNet info.json names version, type, classifier, "
                        "classifier_labels, detector, taxonomy and geofence")
    if info["type"] not in ("always_crop", "full_image"):
        raise PackError(f"unknown model type {info['type']!r}", path=info_path,
                        fix="type must be always_crop or full_image")
    return info


def classifier_kind(path: Path) -> str:
    """'torch' (onnx2torch .pt) or 'keras' (.keras/.h5/SavedModel folder)."""
    if path.is_dir():
        return "keras"
    if path.suffix.lower() in KERAS_SUFFIXES:
        return "keras"
    if path.suffix.lower() in TORCH_SUFFIXES:
        return "torch"
    raise ConvertError(f"unknown classifier format {path.suffix!r}", path=path,
                       fix="expected a .pt (PyTorch), .keras/.h5 or a SavedModel folder")


def convert_classifier(src: Path, dst_onnx: Path, *, opset: int = 17,
                       check_images: list[Path] | None = None) -> dict[str, Any]:
    """Convert a SpeciesNet classifier of either framework; returns its fidelity report."""
    src = Path(src)
    if not src.exists():
        raise ConvertError("classifier not found", path=src, fix="check the path")
    if classifier_kind(src) == "keras":
        from converters.classifier_keras import convert_keras_classifier

        return convert_keras_classifier(src, dst_onnx, opset=opset, check_images=check_images)
    from converters.classifier_torch import convert_torch_classifier

    return convert_torch_classifier(src, dst_onnx, opset=opset, check_images=check_images)


def run_in_child(target: str, *args: Any, **kwargs: Any) -> Any:
    """Call `module:function(*args, **kwargs)` in a fresh interpreter; return its JSON result.

    Why: torch (detector) and TensorFlow (Keras classifiers) must not share a process (it
    segfaults here), and the caller may already hold either; a child keeps this process
    framework-free. An EdgenetError raised in the child is re-raised here with its message.
    """
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="edgenet-child-") as td:
        spec = Path(td) / "call.json"
        out = Path(td) / "result.json"
        spec.write_text(json.dumps({"target": target, "args": [str(a) for a in args],
                                    "kwargs": kwargs}), encoding="utf-8")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        proc = subprocess.run([sys.executable, "-m", "converters.pack", str(spec), str(out)],
                              env=env, capture_output=True, text=True, check=False)
        if out.is_file():
            result = json.loads(out.read_text(encoding="utf-8"))
            if "error" in result:
                raise ConvertError(result["error"])
            return result["value"]
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise ConvertError(f"{target} crashed (exit {proc.returncode}):\n{tail}",
                           fix="install the convert extra (pip install 'edgenet[convert]')")


def _child_main(spec_path: str, out_path: str) -> int:
    import importlib

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    module, func = spec["target"].split(":")
    try:
        value = getattr(importlib.import_module(module), func)(*spec["args"], **spec["kwargs"])
    except EdgenetError as exc:
        Path(out_path).write_text(json.dumps({"error": str(exc)}), encoding="utf-8")
        return 2
    Path(out_path).write_text(json.dumps({"value": jsonable(value)}, default=str),
                              encoding="utf-8")
    return 0


def _failed(report: dict[str, Any]) -> list[str]:
    """Failures a converter report admits to (converters raise too; this is belt and braces)."""
    if report.get("passed") is False:
        return [str(f) for f in report.get("failures", [])] or ["report says not passed"]
    return []


def _onnx_io(path: Path) -> tuple[list[Any], list[Any]]:
    """(input shapes, output shapes) of an ONNX file, symbolic dims as strings."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def dims(vi: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return [dims(i) for i in model.graph.input], [dims(o) for o in model.graph.output]


def resolve_detector(src: Path, value: str, *, home: Path | None, log: LogFn,
                     progress: Any = None, manifest: Any = None) -> tuple[Path, str | None]:
    """Local detector checkpoint for info.json's `detector` (downloading a URL if needed)."""
    if value.startswith(("http://", "https://")):
        from converters.pull import fetch_detector

        log(f"detector is a URL, fetching {value}")
        return fetch_detector(value, src_dir=src, home=home, progress=progress,
                              manifest=manifest), value
    path = _inside(src, value, "detector")
    if not path.is_file():
        raise PackError("detector checkpoint named by info.json not found", path=path,
                        fix="put the MegaDetector .pt there or set info.json's detector to its URL")
    return path, None


def _keras_twins(src: Path, info: dict[str, Any]) -> dict[str, Path]:
    twins = info.get(KERAS_TWIN_KEY) or {}
    if isinstance(twins, str):
        twins = {"keras": twins}
    elif isinstance(twins, list):
        twins = {Path(t).suffix.lstrip(".") or f"twin{i}": t for i, t in enumerate(twins)}
    out = {}
    for key, rel in twins.items():
        path = _inside(src, rel, KERAS_TWIN_KEY)
        if not path.exists():
            raise PackError(f"Keras twin {rel!r} listed in info.json is missing", path=path)
        out[str(key)] = path
    return out


def _place(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Rename the finished TMP pack to DST; an old DST is swapped out, then removed."""
    old = None
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise PackError("destination exists", path=dst, fix="pass --force to replace it")
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except OSError:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the pack


def convert_pack(
    src: Path,
    dst: Path,
    *,
    variants: Sequence[str] = VARIANTS,
    opset: int = 17,
    overwrite: bool = False,
    check_images: Sequence[Path] | None = None,
    max_images: int = 6,
    detector_size: int = 1280,
    calibration_size: int = 640,
    synthetic: bool | None = None,
    home: Path | None = None,
    progress: Any = None,
    manifest: Any = None,
    log: LogFn | None = None,
) -> Path:
    """Convert the SpeciesNet folder SRC into the edgenet pack DST; returns DST.

    VARIANTS: any of "fp16", "int8". CHECK_IMAGES: files/folders of real images for the
    fidelity checks and int8 calibration (default `../shared/images`; without any, smooth
    synthetic images are used and the report says so). DETECTOR_SIZE is the letterbox size of
    the variant fidelity check (speciesnet's 1280), CALIBRATION_SIZE the one int8 ranges are
    collected at (smaller to keep calibration of YOLOv5x6 short and memory-bounded).
    """
    from converters import fidelity, quantize

    log = log or _quiet
    src, dst = Path(src), Path(dst)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConvertError(f"unknown variant(s) {', '.join(bad)}", fix="use fp16 and/or int8")
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise PackError("destination exists", path=dst, fix="pass --force to replace it")
    info = read_source_info(src)
    det_src, det_url = resolve_detector(src, info["detector"], home=home, log=log,
                                        progress=progress, manifest=manifest)
    cls_src = _inside(src, info["classifier"], "classifier")
    if not cls_src.exists():
        raise PackError("classifier named by info.json not found", path=cls_src)
    twins = _keras_twins(src, info)
    copies = {}
    for key in ("classifier_labels", "taxonomy", "geofence"):
        path = _inside(src, info[key], key)
        if not path.is_file():
            raise PackError(f"{key} file named by info.json not found", path=path)
        copies[key] = (info[key], path)
    labels = copies["classifier_labels"][1].read_text(encoding="utf-8").splitlines()
    labels = [ln.strip() for ln in labels if ln.strip()]
    if synthetic is None:
        synthetic = SYNTH_KEY in info or "synthetic" in info["version"]

    # Images for every check: real ones when we have them.
    sources = [Path(p) for p in check_images] if check_images is not None else None
    image_paths = fidelity.find_images(sources if sources is not None
                                       else fidelity.default_image_dirs())
    images, image_names = fidelity.load_images(image_paths, limit=max_images)
    synthetic_inputs = not images
    if synthetic_inputs:
        log("no real images found: fidelity and calibration use synthetic images")
        images = fidelity.synthetic_images(max(2, min(max_images, 4)))
    used_paths = [p for p in image_paths if p.name in set(image_names)]

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    started = time.time()
    try:
        det_name = f"{det_src.stem}.onnx"
        cls_name = f"{cls_src.stem if cls_src.is_file() else cls_src.name}.onnx"
        if det_name == cls_name:
            det_name = f"{det_src.stem}.detector.onnx"

        # 1. fp32 conversions, each proven against its source by its converter.
        log(f"converting detector {det_src.name}")
        det_report = run_in_child("converters.detector:convert_detector", det_src,
                                  tmp / det_name, opset=opset,
                                  check_images=[str(p) for p in used_paths] or None)
        log(f"converting classifier {cls_src.name}")
        cls_report = convert_classifier(cls_src, tmp / cls_name, opset=opset,
                                        check_images=used_paths or None)
        for what, rep in (("detector", det_report), ("classifier", cls_report)):
            if _failed(rep):
                raise ConvertError(f"{what} conversion out of tolerance: "
                                   + "; ".join(_failed(rep)), path=src)
        _, cls_out = _onnx_io(tmp / cls_name)
        n_out = cls_out[0][-1] if cls_out and cls_out[0] else None
        if isinstance(n_out, int) and n_out != len(labels):
            raise PackError(
                f"classifier has {n_out} outputs but the labels file has {len(labels)} lines",
                path=copies["classifier_labels"][1],
                fix="use the labels file that belongs to this classifier")
        stamp_onnx_file(tmp / cls_name, {
            "edgenet.labels": "\n".join(labels),
            "edgenet.model_version": info["version"],
            "edgenet.model_type": info["type"],
        })
        stamp_onnx_file(tmp / det_name, {"edgenet.model_version": info["version"]})

        cls_inputs = fidelity.classifier_inputs(images)
        det_inputs = fidelity.detector_inputs(images, detector_size)

        # 2. Keras twins: the same weights in the Keras formats must convert too.
        twin_reports: dict[str, Any] = {}
        for key, twin in twins.items():
            log(f"converting Keras twin {twin.name}")
            twin_onnx = tmp / f".twin-{key}.onnx"
            rep = convert_classifier(twin, twin_onnx, opset=opset,
                                     check_images=used_paths or None)
            if _failed(rep):
                raise ConvertError(f"Keras twin {twin.name} out of tolerance: "
                                   + "; ".join(_failed(rep)), path=twin)
            cross = fidelity.compare_classifiers(tmp / cls_name, twin_onnx, cls_inputs)
            twin_onnx.unlink()
            if cross["raw"]["max_rel"] > TWIN_REL_TOLERANCE or cross["top1_agreement"] < 1.0:
                raise ConvertError(
                    f"Keras twin {twin.name} and {cls_src.name} disagree after conversion "
                    f"(max rel {cross['raw']['max_rel']:.2e}, top-1 "
                    f"{cross['top1_agreement']:.2f})", path=twin,
                    fix="the twin must hold the same weights as the primary classifier")
            twin_reports[key] = {"source_file": twin.name, "source_sha256": sha256_file(twin),
                                 "conversion": rep, "vs_primary_onnx": cross}

        # 3. variants and their distance from fp32.
        variant_files: dict[str, dict[str, str]] = {}
        det_fid: dict[str, Any] = {"fp32": det_report}
        cls_fid: dict[str, Any] = {"fp32": cls_report}
        for variant in variants:
            det_v = f"{Path(det_name).stem}.{variant}.onnx"
            cls_v = f"{Path(cls_name).stem}.{variant}.onnx"
            log(f"building {variant} variants")
            if variant == "fp16":
                d_how = quantize.to_fp16(tmp / det_name, tmp / det_v)
                c_how = quantize.to_fp16(tmp / cls_name, tmp / cls_v)
            else:
                calib = fidelity.detector_inputs(images, calibration_size)
                d_how = quantize.to_int8(tmp / det_name, tmp / det_v, calib)
                c_how = quantize.to_int8(tmp / cls_name, tmp / cls_v,
                                         [cls_inputs[i:i + 1] for i in range(len(cls_inputs))])
            log(f"measuring {variant} against fp32")
            det_fid[variant] = {"how": d_how, "file": det_v,
                                **fidelity.compare_detectors(tmp / det_name, tmp / det_v,
                                                             det_inputs)}
            cls_fid[variant] = {"how": c_how, "file": cls_v,
                                **fidelity.compare_classifiers(tmp / cls_name, tmp / cls_v,
                                                               cls_inputs)}
            det_fid[variant]["verdict"] = _verdict_detector(det_fid[variant])
            cls_fid[variant]["verdict"] = _verdict_classifier(cls_fid[variant])
            variant_files[variant] = {"detector": det_v, "classifier": cls_v}

        # 4. data files, fidelity report, info.json.
        for _key, (rel, path) in copies.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        fid = {
            "format": PACK_FORMAT,
            "inputs": {
                "images": image_names,
                "synthetic_images": synthetic_inputs,
                "detector_letterbox": detector_size,
                "int8_calibration_letterbox": calibration_size,
                "classifier": "whole images resized to 480x480",
                "note": "fp32 rows compare the ONNX graph with its source framework (the "
                        "converter's own check, which fails the conversion beyond tolerance); "
                        "variant rows compare each variant with the fp32 ONNX graph on CPU.",
            },
            "detector": {"source_file": det_src.name, **det_fid},
            "classifier": {"source_file": cls_src.name, **cls_fid},
        }
        if twin_reports:
            fid["classifier"]["keras_twins"] = twin_reports
        fid_json = json.dumps(fidelity.finite(jsonable(fid, strip=str(tmp))), indent=1,
                              sort_keys=True)
        (tmp / FIDELITY_NAME).write_text(fid_json + "\n", encoding="utf-8")
        source = {
            "folder": src.resolve().name,
            "version": info["version"],
            "detector": {"file": det_src.name, "sha256": sha256_file(det_src),
                         **({"url": det_url} if det_url else {})},
            "classifier": {"file": cls_src.name, "sha256": sha256_file(cls_src),
                           "framework": classifier_kind(cls_src)},
        }
        if twin_reports:
            source["keras_twins"] = {k: {"file": v["source_file"], "sha256": v["source_sha256"]}
                                     for k, v in twin_reports.items()}
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        pack_info = {
            "version": info["version"],
            "type": info["type"],
            "classifier": cls_name,
            "classifier_labels": copies["classifier_labels"][0],
            "detector": det_name,
            "taxonomy": copies["taxonomy"][0],
            "geofence": copies["geofence"][0],
            "edgenet": {
                "format": PACK_FORMAT,
                "precision": "fp32",
                "synthetic": bool(synthetic),
                "sha256": {p.relative_to(tmp).as_posix(): sha256_file(p) for p in files},
                "variants": variant_files,
                "fidelity": FIDELITY_NAME,
                "num_labels": len(labels),
                "opset": opset,
                "source": source,
                "converter_versions": converter_versions(),
            },
        }
        (tmp / "info.json").write_text(json.dumps(pack_info, indent=2) + "\n", encoding="utf-8")
        _validate(tmp)
        _publishable(tmp)
        _place(tmp, dst, overwrite)
        log(f"pack written to {dst} in {time.time() - started:.0f} s")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prepare_cpu_sessions(dst, log)
    prepare_mapped_copies(dst, log)
    return dst


def _pack_models(pack: Path, variant_wanted: Callable[[str], bool]) -> list[str]:
    """PACK's fp32 model files, then those of each precision variant VARIANT_WANTED keeps."""
    info = json.loads((pack / "info.json").read_text(encoding="utf-8"))
    names = [info["detector"], info["classifier"]]
    for variant, files in (info.get("edgenet", {}).get("variants") or {}).items():
        if variant_wanted(variant):
            names += [files["detector"], files["classifier"]]
    return names


def prepare_cpu_sessions(pack: Path, log: LogFn = _quiet) -> int:
    """Build each CPU model of PACK once, so onnxruntime's optimised graph is cached now.

    Why: the first `edgenet run` of a new pack otherwise optimises and saves the graph itself,
    which on the full-size pack took its peak RSS from 2.75 GB to 4.26 GB (above speciesnet's
    3.8 GB; benchmarks/NOTES.md, entry 6) and cost ~1 s. The cache is keyed by the files' final
    path, so this runs after the pack is in place. Never fails a conversion: a model that does
    not load here is reported by `edgenet run` itself. Returns the number of models prepared.
    """
    from edgenet.graph_cache import optimized_model_path
    from edgenet.providers import make_session

    # fp16 graphs are for GPUs; on a CPU they run through casts
    names = _pack_models(pack, lambda variant: variant != "fp16")
    done = 0
    for name in names:
        path = pack / name
        try:
            cached = optimized_model_path(path, ["CPUExecutionProvider"])
            if cached is None or cached.is_file():
                continue
            make_session(path, "cpu")
            done += cached.is_file()
        except Exception as exc:  # noqa: BLE001 - a cache is an optimisation only
            log(f"note: could not prepare the CPU session cache for {name}: {exc}")
    if done:
        log(f"prepared the CPU session cache for {done} model(s)")
    return done


def prepare_mapped_copies(pack: Path, log: LogFn = _quiet) -> int:
    """Where onnxruntime has CUDA, DirectML or OpenVINO, write the mapped copies their
    sessions are built from (`graph_cache.mapped_copy`: the graph with its weights in a mapped
    file; one copy serves all three), for the fp32 models and the fp16 variant, so that the
    first GPU run does not write them (~1 s for the full-size detector; benchmarks/NOTES.md,
    entry 24). Nothing where none of those providers is installed: the copies double the
    pack's size on disk. Never fails a conversion. Returns the number of copies written."""
    import onnxruntime as ort

    from edgenet.graph_cache import MAPPED_PROVIDERS, mapped_copy, mapped_model_path

    have = [p for p in MAPPED_PROVIDERS if p in ort.get_available_providers()]
    if not have:
        return 0
    names = _pack_models(pack, lambda variant: variant == "fp16")
    done = 0
    for name in names:
        try:
            target = mapped_model_path(pack / name, have[:1])
            if target is None or target.is_file():
                continue
            done += mapped_copy(pack / name, have[:1]) is not None
        except Exception as exc:  # noqa: BLE001 - a cache is an optimisation only
            log(f"note: could not write the mapped copy of {name}: {exc}")
    if done:
        log(f"wrote the mapped weights for {', '.join(have)} sessions of {done} model(s)")
    return done


# A variant is called "close" to fp32 when, on the check images, at least this share of the
# detections the ensemble uses (conf >= 0.1) and of top-1 classes are unchanged. Below that the
# report says "degraded": still usable, but expect visibly different predictions.
CLOSE_DETECTION_RECALL = 0.95
CLOSE_TOP1 = 0.9


def _verdict_detector(rep: dict[str, Any]) -> str:
    used = rep["detections_used"]
    ok = min(used["recall"], used["precision"]) >= CLOSE_DETECTION_RECALL
    return "close" if ok else "degraded"


def _verdict_classifier(rep: dict[str, Any]) -> str:
    return "close" if rep["top1_agreement"] >= CLOSE_TOP1 else "degraded"


def _publishable(folder: Path) -> None:
    """mkdtemp makes 0700 folders; give the finished one the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def _validate(pack_dir: Path) -> None:
    """Load the finished pack the way `edgenet run` will (when edgenet.pack is available)."""
    try:
        from edgenet.pack import ModelPack
    except ImportError:
        return
    try:
        ModelPack.load(pack_dir)
    except EdgenetError as exc:
        raise PackError(f"the converted pack does not load: {exc}", path=pack_dir) from None


def jsonable(obj: Any, strip: str | None = None) -> Any:
    """JSON-friendly copy of a report (numpy scalars and arrays, Paths as their names); with
    STRIP, paths inside that (temporary build) folder become relative to it."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v, strip) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v, strip) for v in obj]
    if strip and isinstance(obj, str) and obj.startswith(strip):
        return obj[len(strip):].lstrip("/\\")
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.name
    return obj


if __name__ == "__main__":
    import sys

    raise SystemExit(_child_main(sys.argv[1], sys.argv[2]))
