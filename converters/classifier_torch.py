"""SpeciesNet classifier, PyTorch form (SpeciesNet >= 4.0.1) -> ONNX through torch.onnx.export.

The `.pt` SpeciesNet ships is a whole pickled module that onnx2torch produced from the Keras
model (a torch.fx GraphModule of onnx2torch layers) taking NHWC float input in [0, 1]; speciesnet
loads it with `torch.load(path, weights_only=False)`. Unpickling needs onnx2torch importable.

Exporter choice (measured with torch 2.14.1 / onnx2torch 1.5.15): the TorchScript exporter
(`dynamo=False`) exports onnx2torch modules with a dynamic batch, because onnx2torch layers carry
their own ONNX symbolics; the dynamo exporter fails in torch.export on onnx2torch's ReduceMean
(its axes are a data-dependent tensor). So the legacy exporter is used, with dynamo as a fallback
for a future torch that drops the legacy one.

Like the Keras converter, the work runs in a child interpreter (torch and TensorFlow must not
share a process here), which verifies the graph against torch before it is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from converters.classifier_keras import run_child
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

_EXIT_LOAD_FAILED = 3
_EXIT_FIDELITY = 4


def convert_torch_classifier(
    src_pt: Path,
    dst_onnx: Path,
    *,
    opset: int = 17,
    check_images: list[Path] | None = None,
) -> dict[str, Any]:
    """Converts a SpeciesNet PyTorch `.pt` classifier to ONNX and proves it matches.

    Output graph: input `input` (N, 480, 480, 3) float32 NHWC, N dynamic; output `logits`
    (N, num_labels). `dst_onnx` appears only after torch and onnxruntime agree within
    tolerance on random tensors and real crops; otherwise ConvertError. Returns the
    fidelity report (also stored in the ONNX metadata_props).
    """
    src_pt = Path(src_pt)
    dst_onnx = Path(dst_onnx)
    if not src_pt.is_file():
        raise ConvertError("classifier file not found", path=src_pt,
                           fix="check the path to the SpeciesNet .pt file")
    if not 7 <= opset <= 21:
        raise ConvertError(f"opset {opset} is not supported", path=src_pt,
                           fix="use --opset 17 (default)")
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst_onnx.parent, prefix=".tconv-") as td:
        report_path = Path(td) / "report.json"
        tmp_onnx = Path(td) / "model.onnx"
        args = ["convert", "--src", str(src_pt), "--dst", str(tmp_onnx), "--opset", str(opset),
                "--report", str(report_path)]
        if check_images is not None:
            args += ["--check-images", json.dumps([str(p) for p in check_images])]
        proc = run_child("converters.classifier_torch", args)
        if proc.returncode == _EXIT_FIDELITY:
            report = json.loads(report_path.read_text())
            raise ConvertError(
                "converted ONNX does not match the PyTorch model: "
                + "; ".join(report.get("failures", [])),
                path=src_pt,
                fix="report this model; fidelity: " + json.dumps(report.get("fidelity", {})),
            )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()][-25:]
            what = ("could not load the .pt (needs torch and onnx2torch; it must be a whole "
                    "pickled module)" if proc.returncode == _EXIT_LOAD_FAILED
                    else "could not convert the PyTorch classifier")
            raise ConvertError(
                what + ":\n" + "\n".join(lines), path=src_pt,
                fix="install the convert extra (torch, onnx2torch, onnx) and check the file is "
                "the SpeciesNet classifier .pt, not truncated",
            )
        report = json.loads(report_path.read_text())
        os.replace(tmp_onnx, dst_onnx)
    report["onnx"] = str(dst_onnx)
    return report


# ----------------------------------------------------------------------------- child side


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "onnx2torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def torch_logits(module: Any, x: Any, batch: int = 4) -> Any:
    """Runs the module on NHWC float32 numpy input in chunks, as speciesnet does."""
    import numpy as np
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).numpy())
    return np.concatenate(outs, axis=0)


def export_module(module: Any, dst: Path, opset: int) -> str:
    """torch.onnx.export with a dynamic batch; returns which exporter succeeded."""
    import torch

    example = (torch.rand(2, IMG_SIZE, IMG_SIZE, 3),)
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, example, str(dst), input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME], opset_version=opset, dynamo=False,
                dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
            )
            return "torch.onnx.export(dynamo=False)"
        except Exception as exc:  # noqa: BLE001 - fall through to the dynamo exporter
            errors.append(f"legacy exporter: {type(exc).__name__}: {exc}")
        try:
            torch.onnx.export(
                module, example, str(dst), input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME], opset_version=opset, dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
            )
            return "torch.onnx.export(dynamo=True)"
        except Exception as exc:  # noqa: BLE001
            errors.append(f"dynamo exporter: {type(exc).__name__}: {exc}")
    raise RuntimeError("; ".join(e[:2000] for e in errors))


def _child_convert(ns: argparse.Namespace) -> int:
    import numpy as np
    import onnx
    import torch

    src = Path(ns.src)
    try:
        module = torch.load(str(src), map_location="cpu", weights_only=False)
        if isinstance(module, dict) or not callable(module):
            raise TypeError(f"unpickled a {type(module).__name__}, not a module")
        module = module.float().eval()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a load failure
        print(f"load failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _EXIT_LOAD_FAILED
    for p in module.parameters():
        p.requires_grad_(False)
    dst = Path(ns.dst)
    exporter = export_module(module, dst, ns.opset)
    check = json.loads(ns.check_images) if ns.check_images else None
    x, names = check_inputs([Path(p) for p in check] if check is not None else None)
    ref = torch_logits(module, x)
    num_labels = int(ref.shape[-1])
    got = run_onnx(dst, x)
    cmp, failures = grouped_fidelity(ref, got, names)
    single = run_onnx(dst, x[:1], batch=1)
    cmp["batch1_max_abs_diff_vs_batched"] = float(np.abs(single - got[:1]).max())
    if got.shape != (len(x), num_labels):
        failures.append(f"ONNX output shape {got.shape} != {(len(x), num_labels)}")
    versions = _versions()
    sha = sha256_file(src)
    report = {
        "source": src.name,
        "source_sha256": sha,
        "source_framework": f"torch {torch.__version__} (onnx2torch module)",
        "num_labels": num_labels,
        "opset": ns.opset,
        "exporter": exporter,
        "precision": "fp32",
        "tolerance": {"max_rel_diff": FP32_REL_TOLERANCE,
                      "definition": "max|onnx - source| / max|source logits|"},
        "inputs": names,
        "fidelity": cmp,
        "versions": versions,
        "failures": failures,
    }
    if not failures:
        model = onnx.load(str(dst))
        set_onnx_metadata(model, {
            "edgenet.kind": "speciesnet-classifier",
            "edgenet.source": src.name,
            "edgenet.source_sha256": sha,
            "edgenet.source_framework": report["source_framework"],
            "edgenet.num_labels": num_labels,
            "edgenet.input_layout": "NHWC float32 [0,1] 480x480",
            "edgenet.precision": "fp32",
            "edgenet.converter": exporter,
            "edgenet.converter_versions": json.dumps(versions, sort_keys=True),
            "edgenet.fidelity": json.dumps(cmp, sort_keys=True),
        })
        onnx.save(model, str(dst))
    Path(ns.report).write_text(json.dumps(report, indent=2))
    return _EXIT_FIDELITY if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Child entry point: `python -m converters.classifier_torch convert ...`."""
    from converters.efficientnet import child_convert_main

    return child_convert_main("converters.classifier_torch", _child_convert, argv)


if __name__ == "__main__":
    sys.exit(main())
