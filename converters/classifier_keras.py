"""SpeciesNet classifier, TensorFlow/Keras form (seed-era 4.0.0a/b) -> ONNX through tf2onnx.

Why subprocesses: TensorFlow and torch/onnx2torch in one process segfault here, and a Keras 2
file needs `TF_USE_LEGACY_KERAS=1` set before TensorFlow is first imported. So the public
function only orchestrates: it runs `python -m converters.classifier_keras convert ...` with the
right Keras selected, and the child loads, converts, verifies and writes a JSON report (both
sides shared with the PyTorch converter: `converters/child.py`).

Formats: `.keras` (zip; `metadata.json` names the Keras version that wrote it), `.h5` (HDF5;
root attribute `keras_version`) and TensorFlow SavedModel directories. A file is first opened
with the Keras that wrote it; if that fails the other Keras is tried, so a Keras 2 file that
Keras 3 rejects still converts through tf_keras.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from converters.child import (
    EXIT_LOAD_FAILED,
    child_convert_main,
    convert_in_child,
    finish_conversion,
)
from converters.efficientnet import (
    IMG_SIZE,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    check_inputs,
)
from converters.errors import ConvertError
from converters.onnx_meta import installed_versions

MAX_TF2ONNX_OPSET = 18


# ----------------------------------------------------------------------------- parent side


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
    # The Keras that wrote the file first; the other one if that cannot load it.
    keras2, keras3 = (True, "tf_keras (Keras 2)"), (False, "Keras 3")
    return convert_in_child(
        "converters.classifier_keras", src, dst_onnx, opset=opset, check_images=check_images,
        attempts=[keras2, keras3] if fmt == "keras2" else [keras3, keras2],
        source_name="the Keras classifier",
        fix="install the convert extra (tensorflow-cpu, tf2onnx; tf-keras for Keras 2 files: "
        "pip install --no-deps tf-keras) and check the file is not truncated",
    )


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
    return installed_versions(("tensorflow-cpu", "tensorflow", "keras", "tf_keras", "tf2onnx",
                               "onnx", "onnxruntime", "numpy"))


def _child_convert(ns: argparse.Namespace) -> int:
    import onnx

    src = Path(ns.src)
    try:
        model, loader = load_keras_source(src)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which may retry
        print(f"load failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_LOAD_FAILED
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
    dst = Path(ns.dst)
    onnx.save(proto, str(dst))
    return finish_conversion(
        dst, ref, x, names, src=src, source_framework=loader, converter="tf2onnx",
        versions=versions(), opset=ns.opset, report_path=Path(ns.report),
    )


def main(argv: list[str] | None = None) -> int:
    """Child entry point: `python -m converters.classifier_keras convert ...`."""
    return child_convert_main("converters.classifier_keras", _child_convert, argv)


if __name__ == "__main__":
    sys.exit(main())
