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
import sys
import warnings
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
    return convert_in_child(
        "converters.classifier_torch", src_pt, dst_onnx, opset=opset, check_images=check_images,
        attempts=[(False, "torch")], source_name="the PyTorch classifier",
        fix="install the convert extra (torch, onnx2torch, onnx) and check the file is the "
        "SpeciesNet classifier .pt (a whole pickled module), not truncated",
    )


# ----------------------------------------------------------------------------- child side


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
    import torch

    src = Path(ns.src)
    try:
        module = torch.load(str(src), map_location="cpu", weights_only=False)
        if isinstance(module, dict) or not callable(module):
            raise TypeError(f"unpickled a {type(module).__name__}, not a module")
        module = module.float().eval()
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a load failure
        print(f"load failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    for p in module.parameters():
        p.requires_grad_(False)
    dst = Path(ns.dst)
    exporter = export_module(module, dst, ns.opset)
    check = json.loads(ns.check_images) if ns.check_images else None
    x, names = check_inputs([Path(p) for p in check] if check is not None else None)
    ref = torch_logits(module, x)
    return finish_conversion(
        dst, ref, x, names, src=src,
        source_framework=f"torch {torch.__version__} (onnx2torch module)", converter=exporter,
        versions=installed_versions(("torch", "onnx2torch", "onnx", "onnxscript", "onnxruntime",
                                     "numpy")),
        opset=ns.opset, report_path=Path(ns.report), report_extra={"exporter": exporter},
    )


def main(argv: list[str] | None = None) -> int:
    """Child entry point: `python -m converters.classifier_torch convert ...`."""
    return child_convert_main("converters.classifier_torch", _child_convert, argv)


if __name__ == "__main__":
    sys.exit(main())
