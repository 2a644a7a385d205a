"""SpeciesNet classifier, TensorFlow/Keras form (seed-era 4.0.0a/b) -> ONNX through tf2onnx.

Why subprocesses: TensorFlow and torch/onnx2torch in one process segfault here, and a Keras 2
file needs `TF_USE_LEGACY_KERAS=1` set before TensorFlow is first imported. So the public
function only orchestrates: it runs `python -m converters.classifier_keras convert ...` with the
right Keras selected, and the child loads, converts, verifies and writes a JSON report.

Formats: `.keras` (zip; `metadata.json` names the Keras version that wrote it), `.h5` (HDF5;
root attribute `keras_version`) and TensorFlow SavedModel directories. A file is first opened
with the Keras that wrote it; if that fails the other Keras is tried, so a Keras 2 file that
Keras 3 rejects still converts through tf_keras.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from converters.efficientnet import (
    FP32_REL_TOLERANCE,
    IMG_SIZE,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    check_inputs,
    grouped_fidelity,
    run_onnx,
    set_onnx_metadata,
    sha256_file,
)
from converters.errors import ConvertError

MAX_TF2ONNX_OPSET = 18

#: Exit code of the child when the model file could not be loaded by the Keras it tried.
_EXIT_LOAD_FAILED = 3
#: Exit code of the child when the converted graph is out of tolerance.
_EXIT_FIDELITY = 4


# ----------------------------------------------------------------------------- parent side


def _repo_env(legacy: bool) -> dict[str, str]:
    """Environment for a framework child: repo importable, quiet TF, Keras 2 or 3 selected."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    else:
        env.pop("TF_USE_LEGACY_KERAS", None)
    return env


def run_child(module: str, args: list[str], *, legacy: bool = False) -> subprocess.CompletedProcess:
    """Runs `python -m module args` in a fresh interpreter, capturing its output."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(
        cmd, env=_repo_env(legacy), capture_output=True, text=True, check=False
    )


def _tail(text: str, n: int = 25) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def detect_keras_format(src: Path) -> str:
    """'keras3', 'keras2' or 'savedmodel' from the file itself (no TensorFlow needed).

    Why read the file: the extension says nothing about which Keras wrote it (Keras 2.13+
    also writes `.keras` zips), and loading with the wrong Keras is what fails.
    """
    src = Path(src)
    if src.is_dir():
        if (src / "saved_model.pb").exists() or (src / "saved_model.pbtxt").exists():
            return "savedmodel"
        raise ConvertError(
            "directory is not a TensorFlow SavedModel (no saved_model.pb)", path=src,
            fix="pass a .keras or .h5 file, or a SavedModel directory",
        )
    if zipfile.is_zipfile(src):
        try:
            with zipfile.ZipFile(src) as zf:
                meta = json.loads(zf.read("metadata.json"))
            version = str(meta.get("keras_version", "3"))
        except (KeyError, ValueError):
            version = "3"
        return "keras2" if version.startswith("2") else "keras3"
    with open(src, "rb") as fp:
        magic = fp.read(8)
    if magic == b"\x89HDF\r\n\x1a\n":
        try:
            import h5py

            with h5py.File(src, "r") as f:
                version = f.attrs.get("keras_version", b"2")
            version = version.decode() if isinstance(version, bytes) else str(version)
        except Exception:  # noqa: BLE001 - unreadable attrs: assume the common Keras 2 case
            version = "2"
        return "keras3" if version.startswith("3") else "keras2"
    raise ConvertError(
        "not a Keras model file (neither a .keras zip nor an HDF5 .h5)", path=src,
        fix="pass the classifier file from a SpeciesNet Keras download (.keras/.h5/SavedModel)",
    )


def convert_keras_classifier(
    src: Path,
    dst_onnx: Path,
    *,
    opset: int = 17,
    check_images: list[Path] | None = None,
) -> dict[str, Any]:
    """Converts a Keras/TensorFlow SpeciesNet classifier to ONNX and proves it matches.

    Output graph: input `input` (N, 480, 480, 3) float32 NHWC in [0, 1], N dynamic; output
    `logits` (N, num_labels). Verified against the source model on random tensors and real
    crops before `dst_onnx` appears (written atomically); raises ConvertError beyond
    tolerance. Returns the fidelity report (also stored in the ONNX metadata_props).
    """
    src = Path(src)
    dst_onnx = Path(dst_onnx)
    if not src.exists():
        raise ConvertError("classifier file not found", path=src,
                           fix="check the path to the .keras/.h5/SavedModel")
    if not 1 <= opset <= MAX_TF2ONNX_OPSET:
        raise ConvertError(f"opset {opset} is not supported by tf2onnx (max 18)", path=src,
                           fix="use --opset 17 (default) or 18")
    fmt = detect_keras_format(src)
    order = {"keras3": [False, True], "keras2": [True, False], "savedmodel": [False, True]}[fmt]
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    attempts = []
    with tempfile.TemporaryDirectory(dir=dst_onnx.parent, prefix=".kconv-") as td:
        report_path = Path(td) / "report.json"
        tmp_onnx = Path(td) / "model.onnx"
        args = ["convert", "--src", str(src), "--dst", str(tmp_onnx), "--opset", str(opset),
                "--report", str(report_path)]
        if check_images is not None:
            args += ["--check-images", json.dumps([str(p) for p in check_images])]
        for legacy in order:
            proc = run_child("converters.classifier_keras", args, legacy=legacy)
            if proc.returncode == 0:
                break
            which = "tf_keras (Keras 2)" if legacy else "Keras 3"
            if proc.returncode == _EXIT_FIDELITY:
                report = json.loads(report_path.read_text())
                raise ConvertError(
                    "converted ONNX does not match the Keras model: "
                    + "; ".join(report.get("failures", [])),
                    path=src,
                    fix="report this model; the fidelity report is: "
                    + json.dumps(report.get("fidelity", {})),
                )
            attempts.append(f"[{which}, exit {proc.returncode}]\n{_tail(proc.stderr)}")
            if proc.returncode != _EXIT_LOAD_FAILED:
                break
        else:
            proc = None
        if proc is None or proc.returncode != 0:
            raise ConvertError(
                "could not convert the Keras classifier:\n" + "\n".join(attempts), path=src,
                fix="install the convert extra (tensorflow-cpu, tf2onnx; tf-keras for Keras 2 "
                "files: pip install --no-deps tf-keras) and check the file is not truncated",
            )
        report = json.loads(report_path.read_text())
        os.replace(tmp_onnx, dst_onnx)
    report["onnx"] = str(dst_onnx)
    return report


# ----------------------------------------------------------------------------- child side


def _import_tf() -> tuple[Any, Any, bool]:
    """TensorFlow and the Keras that TF_USE_LEGACY_KERAS selects."""
    import tensorflow as tf

    legacy = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    if legacy:
        import tf_keras as keras
    else:
        import keras
    return tf, keras, legacy


def keras_logits(model: Any, x: Any, batch: int = 4) -> Any:
    """Runs a Keras model (or a callable) in inference mode, in chunks, to numpy."""
    import numpy as np

    outs = []
    for i in range(0, len(x), batch):
        y = model(x[i : i + batch], training=False) if hasattr(model, "layers") else model(
            x[i : i + batch])
        outs.append(np.asarray(y))
    return np.concatenate(outs, axis=0)


def tf_callable_to_onnx(fn: Any, opset: int) -> Any:
    """tf2onnx from a tf.function with a dynamic batch; renames I/O to input/logits."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, IMG_SIZE, IMG_SIZE, 3), tf.float32, name=ONNX_INPUT_NAME),)
    func = tf.function(fn, input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(func, input_signature=spec, opset=opset)
    graph = proto.graph
    if len(graph.output) != 1:
        raise ConvertError(f"expected one model output, found {len(graph.output)}",
                           fix="pass the SpeciesNet classifier (single logits output)")
    old_out = graph.output[0].name
    if old_out != ONNX_OUTPUT_NAME:
        for node in graph.node:
            for i, o in enumerate(node.output):
                if o == old_out:
                    node.output[i] = ONNX_OUTPUT_NAME
            for i, o in enumerate(node.input):
                if o == old_out:
                    node.input[i] = ONNX_OUTPUT_NAME
        graph.output[0].name = ONNX_OUTPUT_NAME
    for vi in (graph.input[0], graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def keras_model_to_onnx(model: Any, opset: int) -> Any:
    """ONNX ModelProto for a Keras 2 or Keras 3 model (inference mode)."""
    return tf_callable_to_onnx(lambda x: model(x, training=False), opset)


def load_keras_source(src: Path) -> tuple[Any, str]:
    """Loads a .keras/.h5 (Keras model) or a SavedModel (serving signature callable)."""
    tf, keras, legacy = _import_tf()
    src = Path(src)
    if src.is_dir():
        loaded = tf.saved_model.load(str(src))
        sig = loaded.signatures.get("serving_default")
        if sig is None:
            raise RuntimeError("SavedModel has no serving_default signature")
        in_keys = list(sig.structured_input_signature[1].keys())
        out_keys = list(sig.structured_outputs.keys())
        if len(in_keys) != 1 or len(out_keys) != 1:
            raise RuntimeError(f"expected 1 input/1 output, got {in_keys} -> {out_keys}")

        def call(x: Any) -> Any:
            return sig(**{in_keys[0]: tf.convert_to_tensor(x)})[out_keys[0]]

        call._keepalive = loaded  # type: ignore[attr-defined]
        return call, "tensorflow-savedmodel"
    model = keras.models.load_model(str(src), compile=False)
    return model, ("tf_keras " if legacy else "keras ") + keras.__version__


def versions() -> dict[str, str]:
    """Versions of the libraries on the TF side (for the report and ONNX metadata)."""
    import importlib.metadata as md

    out = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "tf_keras", "tf2onnx", "onnx",
                 "onnxruntime", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def _child_convert(ns: argparse.Namespace) -> int:
    import numpy as np
    import onnx

    src = Path(ns.src)
    try:
        model, loader = load_keras_source(src)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which may retry
        print(f"load failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _EXIT_LOAD_FAILED
    if hasattr(model, "layers"):
        shape = tuple(model.inputs[0].shape)
        if tuple(shape[1:]) != (IMG_SIZE, IMG_SIZE, 3):
            print(f"input shape {shape} is not (N, 480, 480, 3)", file=sys.stderr)
            return 2
        proto = keras_model_to_onnx(model, ns.opset)
    else:
        proto = tf_callable_to_onnx(model, ns.opset)
    check = json.loads(ns.check_images) if ns.check_images else None
    x, names = check_inputs([Path(p) for p in check] if check is not None else None)
    ref = keras_logits(model, x)
    num_labels = int(ref.shape[-1])
    meta = {
        "edgenet.kind": "speciesnet-classifier",
        "edgenet.source": src.name,
        "edgenet.source_sha256": sha256_file(src),
        "edgenet.source_framework": loader,
        "edgenet.num_labels": num_labels,
        "edgenet.input_layout": "NHWC float32 [0,1] 480x480",
        "edgenet.precision": "fp32",
        "edgenet.converter": "tf2onnx",
        "edgenet.converter_versions": json.dumps(versions(), sort_keys=True),
    }
    set_onnx_metadata(proto, meta)
    dst = Path(ns.dst)
    onnx.save(proto, str(dst))
    got = run_onnx(dst, x)
    cmp, failures = grouped_fidelity(ref, got, names)
    # Dynamic batch: batch of one must equal the same row computed inside a bigger batch.
    single = run_onnx(dst, x[:1], batch=1)
    cmp["batch1_max_abs_diff_vs_batched"] = float(np.abs(single - got[:1]).max())
    if got.shape != (len(x), num_labels):
        failures.append(f"ONNX output shape {got.shape} != {(len(x), num_labels)}")
    report = {
        "source": src.name,
        "source_sha256": meta["edgenet.source_sha256"],
        "source_framework": loader,
        "num_labels": num_labels,
        "opset": ns.opset,
        "precision": "fp32",
        "tolerance": {"max_rel_diff": FP32_REL_TOLERANCE,
                      "definition": "max|onnx - source| / max|source logits|"},
        "inputs": names,
        "fidelity": cmp,
        "versions": versions(),
        "failures": failures,
    }
    if not failures:
        # The fidelity numbers travel with the graph so a pack can be audited later.
        set_onnx_metadata(proto, {"edgenet.fidelity": json.dumps(cmp, sort_keys=True)})
        onnx.save(proto, str(dst))
    Path(ns.report).write_text(json.dumps(report, indent=2))
    return _EXIT_FIDELITY if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Child entry point: `python -m converters.classifier_keras convert ...`."""
    from converters.efficientnet import child_convert_main

    return child_convert_main("converters.classifier_keras", _child_convert, argv)


if __name__ == "__main__":
    sys.exit(main())
