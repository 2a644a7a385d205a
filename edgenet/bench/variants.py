"""A pack's precision variants, their fidelity reports and FLOP costs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgenet.errors import EdgenetError


def load_pack_info(pack: Path) -> dict[str, Any]:
    """The pack's info.json, or an error that says how to make a pack."""
    info_path = pack / "info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EdgenetError(
            "not a model pack (no info.json)", path=pack,
            fix="pass --model PACK (`edgenet convert pack` or `edgenet models pull` makes one)",
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgenetError(f"cannot read info.json: {exc}", path=info_path,
                           fix="re-create the pack") from exc
    if not isinstance(info, dict):
        raise EdgenetError("info.json is not an object", path=info_path, fix="re-create the pack")
    return info


def pack_variants(info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Precision -> {detector, classifier, fidelity...} from info.json's "edgenet.variants";
    fp32 is the pack's own detector/classifier when not listed."""
    ext = info.get("edgenet") if isinstance(info.get("edgenet"), dict) else {}
    raw = ext.get("variants", {}) if isinstance(ext, dict) else {}
    variants: dict[str, dict[str, Any]] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            variants[str(k)] = dict(v) if isinstance(v, dict) else {"value": v}
    elif isinstance(raw, list):
        for v in raw:
            if isinstance(v, dict) and "precision" in v:
                variants[str(v["precision"])] = dict(v)
    variants.setdefault("fp32", {"detector": info.get("detector"),
                                 "classifier": info.get("classifier")})
    return variants


def _find_key(obj: Any, key: str) -> Any:
    """First value stored under `key` anywhere in a nested dict/list (depth first)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            r = _find_key(v, key)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = _find_key(v, key)
            if r is not None:
                return r
    return None


def _read_json(path: Path) -> Any:
    with contextlib.suppress(OSError, json.JSONDecodeError):
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def _variant_fidelity(pack: Path, info: Mapping[str, Any], precision: str
                      ) -> tuple[Any, Any]:
    """(detector part, classifier part) of the fidelity report for one precision.

    The converter writes one pack-level report (info.json "edgenet.fidelity" names it) with
    `detector[precision]` and `classifier[precision]` entries; a variant entry may also carry
    its own report (inline or a file name)."""
    ext = info.get("edgenet") if isinstance(info.get("edgenet"), dict) else {}
    report = ext.get("fidelity") if isinstance(ext, dict) else None
    if isinstance(report, str):
        report = _read_json(pack / report)
    det = cls = None
    if isinstance(report, dict):
        d, c = report.get("detector"), report.get("classifier")
        det = d.get(precision) if isinstance(d, dict) else None
        cls = c.get(precision) if isinstance(c, dict) else None
    if det is None and cls is None:
        own = pack_variants(info).get(precision, {}).get("fidelity")
        if isinstance(own, str):
            own = _read_json(pack / own)
        if isinstance(own, dict):
            det = own.get("detector", own)
            cls = own.get("classifier", own)
    return det, cls


def fidelity_summary(pack: Path, info: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """The numbers a user picks a precision by: detector recall/precision of the detections
    the ensemble uses (conf >= 0.1) and classifier top-1 / top-5 agreement, vs fp32."""
    if precision == "fp32":
        return {"text": "reference (fp32)"}
    if precision == "bf16":
        # The converter measures its variants with onnxruntime's CPU provider, which has no
        # bf16; `benchmarks/compare_reference.py` measures bf16 from the predictions instead.
        return {"text": "not measured at conversion (fp32 graphs computed in bf16)"}
    if precision not in pack_variants(info):
        return {"text": "not in pack"}
    det_part, cls_part = _variant_fidelity(pack, info, precision)
    if det_part is None and cls_part is None:
        return {"text": "no fidelity report"}
    det_used = _find_key(det_part, "detections_used")
    top1 = _find_key(cls_part, "top1_agreement")
    top5 = _find_key(cls_part, "top5_overlap")
    out: dict[str, Any] = {}
    parts = []
    if isinstance(det_used, dict):
        out["detector_recall"] = det_used.get("recall")
        out["detector_precision"] = det_used.get("precision")
        out["detector_max_conf_diff"] = det_used.get("max_conf_diff")
        if out["detector_recall"] is not None:
            parts.append(
                f"det R/P {float(out['detector_recall']):.2f}/"
                f"{float(out['detector_precision'] or 0):.2f}"
            )
    if top1 is not None:
        out["classifier_top1"] = top1
        parts.append(f"top1 {float(top1):.2f}")
    if top5 is not None:
        out["classifier_top5"] = top5
        parts.append(f"top5 {float(top5):.2f}")
    out["text"] = ", ".join(parts) if parts else "fidelity report without agreement numbers"
    return out


def floor_estimate(report: Mapping[str, Any], costs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Seconds per image the measured peaks allow: FLOPs / peak, per model, for the fp32
    MatMul peak (`<role>_s`) and the fp32 3x3 Conv peak (`<role>_s_conv`)."""
    peaks = report.get("peak") or {}
    mm = (peaks.get("onnxruntime_fp32") or {}).get("best_gflops")
    conv = (peaks.get("onnxruntime_conv") or {}).get("best_gflops")
    if not mm or not costs:
        return {}
    out: dict[str, Any] = {"peak_gflops": mm, "conv_peak_gflops": conv}
    for name, cost in costs.items():
        if isinstance(cost, dict) and cost.get("flops"):
            out[f"{name}_s"] = cost["flops"] / 1e9 / mm
            if conv:
                out[f"{name}_s_conv"] = cost["flops"] / 1e9 / conv
    return out


def pack_costs(pack: Path) -> dict[str, Any]:
    """FLOPs/bytes of the pack's fp32 detector (1280x960) and classifier (one 480x480 crop);
    empty when `onnx` is not installed."""
    try:
        from edgenet import flops
    except ImportError:  # pragma: no cover
        return {}
    info = load_pack_info(pack)
    out: dict[str, Any] = {}
    for role in ("detector", "classifier"):
        name = info.get(role)
        if not isinstance(name, str) or not (pack / name).is_file():
            continue
        try:
            shapes = flops.input_shape_for(pack / name, role)
            out[role] = flops.count_model(pack / name, shapes).to_dict()
        except ImportError:
            return {}
        except Exception as exc:  # noqa: BLE001 - costs are informative only
            out[role] = {"error": str(exc)}
    return out
