"""Classifier conversion in a child interpreter: the parent's side and the child's, shared by
the Keras (`classifier_keras`) and PyTorch (`classifier_torch`) converters.

Why a child: TensorFlow and torch/onnx2torch in one process segfault here, and a Keras 2 file
needs `TF_USE_LEGACY_KERAS=1` set before TensorFlow is first imported. The parent
(`convert_in_child`) runs `python -m <converter> convert --src ... --dst ... --report ...` in a
temporary folder beside the destination; the child loads the model, writes the ONNX graph and
calls `finish_conversion`, which proves the graph against the source model's logits, stamps the
metadata and writes the JSON report. The graph reaches its destination (atomically) only when
the child exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from converters.efficientnet import (
    FP32_REL_TOLERANCE,
    grouped_fidelity,
    run_onnx,
    sha256_file,
)
from converters.errors import ConvertError
from converters.onnx_meta import stamp_onnx_file

#: Exit code of the child when it could not load the model file.
EXIT_LOAD_FAILED = 3
#: Exit code of the child when the converted graph is out of tolerance.
EXIT_FIDELITY = 4

#: What `edgenet.input_layout` says of every converted SpeciesNet classifier.
CLASSIFIER_INPUT_LAYOUT = "NHWC float32 [0,1] 480x480"


# ----------------------------------------------------------------------------- parent side


def repo_env(legacy: bool) -> dict[str, str]:
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
        cmd, env=repo_env(legacy), capture_output=True, text=True, check=False
    )


def tail(text: str, n: int = 25) -> str:
    """The last N non-blank lines of a child's output (for error messages)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def convert_in_child(
    module: str,
    src: Path,
    dst_onnx: Path,
    *,
    opset: int,
    check_images: Sequence[Path] | None,
    attempts: Sequence[tuple[bool, str]],
    source_name: str,
    fix: str,
) -> dict[str, Any]:
    """Converts SRC in children of MODULE, one per attempt, until one succeeds.

    ATTEMPTS: `(legacy_keras, label)` pairs, tried in order while the child reports that it
    could not load the file (a Keras 2 file that Keras 3 rejects may load with tf_keras); any
    other failure ends the tries. SOURCE_NAME names the source model in messages ("the Keras
    model"). Returns the child's report with `onnx` set to DST_ONNX, which appears (atomically)
    only on success; raises ConvertError otherwise, with FIX as the remedy for a failed load.
    """
    dst_onnx.parent.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(dir=dst_onnx.parent, prefix=".conv-") as td:
        report_path = Path(td) / "report.json"
        tmp_onnx = Path(td) / "model.onnx"
        args = ["convert", "--src", str(src), "--dst", str(tmp_onnx), "--opset", str(opset),
                "--report", str(report_path)]
        if check_images is not None:
            args += ["--check-images", json.dumps([str(p) for p in check_images])]
        for legacy, label in attempts:
            proc = run_child(module, args, legacy=legacy)
            if proc.returncode == 0:
                break
            if proc.returncode == EXIT_FIDELITY:
                report = json.loads(report_path.read_text())
                raise ConvertError(
                    f"converted ONNX does not match {source_name}: "
                    + "; ".join(report.get("failures", [])),
                    path=src,
                    fix="report this model; the fidelity report is: "
                    + json.dumps(report.get("fidelity", {})),
                )
            what = "could not load it" if proc.returncode == EXIT_LOAD_FAILED else "failed"
            failed.append(f"[{label}: {what}, exit {proc.returncode}]\n{tail(proc.stderr)}")
            if proc.returncode != EXIT_LOAD_FAILED:
                break
        else:
            proc = None
        if proc is None or proc.returncode != 0:
            raise ConvertError(f"could not convert {source_name}:\n" + "\n".join(failed),
                               path=src, fix=fix)
        report = json.loads(report_path.read_text())
        os.replace(tmp_onnx, dst_onnx)
    report["onnx"] = str(dst_onnx)
    return report


# ----------------------------------------------------------------------------- child side


def child_convert_main(prog: str, convert: Callable[[Any], int],
                       argv: list[str] | None = None) -> int:
    """Entry point of a converter child (`python -m converters.classifier_keras|torch convert
    --src ... --dst ... --report ...`): the one command line `convert_in_child` writes."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--src", required=True)
    c.add_argument("--dst", required=True)
    c.add_argument("--opset", type=int, default=17)
    c.add_argument("--report", required=True)
    c.add_argument("--check-images", default=None, help="JSON list of image paths")
    return convert(ap.parse_args(argv))


def finish_conversion(
    dst: Path,
    reference_logits: Any,
    inputs: Any,
    input_names: list[str],
    *,
    src: Path,
    source_framework: str,
    converter: str,
    versions: dict[str, str],
    opset: int,
    report_path: Path,
    report_extra: dict[str, Any] | None = None,
) -> int:
    """Proves the graph at DST against the source model's logits on the same INPUTS, then
    stamps its metadata and writes the report. Returns the child's exit code (0 or
    EXIT_FIDELITY).

    Checked: every input group within FP32_REL_TOLERANCE with the same top-5
    (`grouped_fidelity`), the output shape, and (reported) that a batch of one gives the row
    it gives inside a bigger batch (the graph's batch is dynamic).
    """
    import numpy as np

    got = run_onnx(dst, inputs)
    cmp, failures = grouped_fidelity(reference_logits, got, input_names)
    single = run_onnx(dst, inputs[:1], batch=1)
    cmp["batch1_max_abs_diff_vs_batched"] = float(np.abs(single - got[:1]).max())
    num_labels = int(reference_logits.shape[-1])
    if got.shape != (len(inputs), num_labels):
        failures.append(f"ONNX output shape {got.shape} != {(len(inputs), num_labels)}")
    sha = sha256_file(src)
    report = {
        "source": src.name,
        "source_sha256": sha,
        "source_framework": source_framework,
        "num_labels": num_labels,
        "opset": opset,
        **(report_extra or {}),
        "precision": "fp32",
        "tolerance": {"max_rel_diff": FP32_REL_TOLERANCE,
                      "definition": "max|onnx - source| / max|source logits|"},
        "inputs": input_names,
        "fidelity": cmp,
        "versions": versions,
        "failures": failures,
    }
    if not failures:
        # The fidelity numbers travel with the graph so a pack can be audited later.
        stamp_onnx_file(dst, {
            "edgenet.kind": "speciesnet-classifier",
            "edgenet.source": src.name,
            "edgenet.source_sha256": sha,
            "edgenet.source_framework": source_framework,
            "edgenet.num_labels": str(num_labels),
            "edgenet.input_layout": CLASSIFIER_INPUT_LAYOUT,
            "edgenet.precision": "fp32",
            "edgenet.converter": converter,
            "edgenet.converter_versions": json.dumps(versions, sort_keys=True),
            "edgenet.fidelity": json.dumps(cmp, sort_keys=True),
        })
    report_path.write_text(json.dumps(report, indent=2))
    return EXIT_FIDELITY if failures else 0
