"""Outputs of a bench: JSON, a Markdown table, a PNG of stage times, and `--compare`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgenet.bench.stages import STAGE_COLOURS, STAGE_LABELS, STAGES
from edgenet.errors import InputError


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def cell_line(cell: Mapping[str, Any]) -> str:
    if not cell.get("ok"):
        return f"  {cell['key']}: FAILED {cell.get('error', '')}"
    st = cell["stage_ms_per_image"]
    stages = ", ".join(f"{STAGE_LABELS[s]} {st[s]:.0f}" for s in STAGES)
    return (
        f"  {cell['key']}: {cell['images_per_s']:.3f} images/s; ms/image: {stages}; "
        f"peak RSS {_fmt(cell.get('peak_rss_tree_mb') or cell.get('self_peak_rss_mb'), 0)} MB"
        + (f"; fidelity vs fp32: {cell['fidelity']}" if cell.get("fidelity") else "")
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: machine, peak and floor, then one row per cell."""
    m = report["machine"]
    lines = [
        f"# edgenet bench ({report['created']})",
        "",
        f"- machine: {m['cpu']}, {m.get('usable_cores', m['logical_cores'])} usable cores"
        f" ({m['logical_cores']} logical), {m.get('memory_gb', '?')} GB, {m['platform']}",
        f"- CPU features: {', '.join(m.get('cpu_flags') or []) or '-'}",
        f"- onnxruntime {m['onnxruntime']} (providers: {', '.join(m['providers'])}), "
        f"numpy {m['numpy']}, Python {m['python']}, edgenet {m['edgenet']}",
    ]
    if m.get("gpus"):
        lines.append("- GPUs: " + "; ".join(f"{g['name']} {g['memory']}" for g in m["gpus"]))
    pk = report["pack"]
    lines.append(
        f"- pack: {pk['path']} (version {pk.get('version')}, type {pk.get('type')}, "
        f"variants {', '.join(pk.get('variants') or [])}"
        + (", SYNTHETIC weights" if pk.get("synthetic") else "") + ")"
    )
    im = report["images"]
    sizes = ", ".join(f"{k} x{v}" for k, v in im["sizes"].items())
    lines.append(f"- images: {im['count']} ({im['source']}; {sizes})")
    lines.append(f"- threads: {report.get('threads') or 'onnxruntime default'}; decode workers:"
                 f" {'pipeline default' if report.get('workers') is None else report['workers']}")
    peak = report.get("peak") or {}
    if peak:
        o = peak.get("onnxruntime_fp32", {})
        n = peak.get("numpy_fp32", {})
        i8 = peak.get("onnxruntime_int8", {})
        cv = peak.get("onnxruntime_conv", {})
        lines.append(
            f"- matmul peak (n={o.get('n')}): onnxruntime fp32 {_fmt(o.get('best_gflops'))} "
            f"GFLOP/s ({_fmt(o.get('gflops_per_cpu_second'))} per CPU-second: the rate "
            f"while running, unaffected by other jobs), numpy fp32 "
            f"{_fmt(n.get('best_gflops'))} GFLOP/s"
            + (f", onnxruntime int8 {_fmt(i8.get('best_gflops'))} GOP/s" if i8 else "")
            + (f"; onnxruntime fp32 3x3 conv {_fmt(cv.get('best_gflops'))} GFLOP/s" if cv
               else "")
        )
    costs = report.get("costs") or {}
    floor = report.get("floor") or {}
    for role in ("detector", "classifier"):
        c = costs.get(role)
        if isinstance(c, dict) and c.get("flops"):
            shape = next(iter(c["input_shapes"].values()))
            fl, flc = floor.get(f"{role}_s"), floor.get(f"{role}_s_conv")
            lines.append(
                f"- {role}: {c['flops'] / 1e9:.1f} GFLOPs at {shape}, weights "
                f"{c['weight_bytes'] / 1e6:.0f} MB"
                + (f"; floor {fl * 1000:.0f} ms at the fp32 matmul peak" if fl else "")
                + (f", {flc * 1000:.0f} ms at the conv peak" if flc else "")
            )
    lines += [
        "",
        "Stage columns are milliseconds of work per image (summed over the run; stages that "
        "overlap can add up to more than the wall time). images/s excludes session start-up; "
        "'first' is process start to the first image done.",
        "",
        "| device | precision | batch | images/s | first (s) | "
        + " | ".join(STAGE_LABELS[s] for s in STAGES)
        + " | peak RSS (MB) | GPU (MB) | fidelity vs fp32 |",
        "|" + "---|" * (5 + len(STAGES) + 3),
    ]
    for c in report["cells"]:
        head = f"| {c['device']} | {c['precision']} | {c['batch_size']} | "
        if not c.get("ok"):
            # One table row: an error's own line breaks and pipes would end it early.
            error = " ".join(str(c.get("error", "")).split()).replace("|", "/")
            lines.append(head + "failed | - | " + " | ".join("-" for _ in STAGES)
                         + f" | - | - | {error[:200]} |")
            continue
        st = c["stage_ms_per_image"]
        rss = c.get("peak_rss_tree_mb") or c.get("self_peak_rss_mb")
        lines.append(
            head + f"{c['images_per_s']:.3f} | {_fmt(c.get('first_image_s'), 2)} | "
            + " | ".join(f"{st[s]:.0f}" for s in STAGES)
            + f" | {_fmt(rss, 0)} | {_fmt(c.get('peak_gpu_mb'), 0)} | {c.get('fidelity', '')} |"
        )
    notes = [_classifier_alone_note(c) for c in report["cells"] if c.get("classifier_alone")]
    notes += [line for c in report["cells"] if (line := stage_threads_note(c))]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def stage_threads_note(cell: Mapping[str, Any], label: str | None = None) -> str:
    """One line on the cell's stage threads (GPU providers run the stages on threads): the
    share of each thread's time spent waiting for its input or for the next thread, and which
    thread therefore sets the rate (the one that waits least). Empty without stage threads."""
    rows = [r for r in cell.get("stage_threads") or [] if r.get("seconds")]
    if not cell.get("ok") or len(rows) < 2:
        return ""

    def share(value: float | None, total: float) -> str:
        return "-" if value is None else f"{100.0 * value / total:.0f}%"

    def waiting(row: Mapping[str, Any]) -> float:
        return ((row.get("waiting_for_input_s") or 0.0)
                + (row.get("waiting_for_output_s") or 0.0)) / row["seconds"]

    parts = [f"{r['thread']} {share(r.get('waiting_for_input_s'), r['seconds'])} / "
             f"{share(r.get('waiting_for_output_s'), r['seconds'])}" for r in rows]
    limit = min(rows, key=waiting)
    work = limit.get("work") or ""
    label = label or f"{cell['device']} {cell['precision']} b{cell['batch_size']}"
    return (f"- {label}, stage threads "
            f"(share of each thread's time waiting for its input / for the next thread): "
            f"{', '.join(parts)}; the rate is set by {limit['thread']}"
            + (f" ({work})" if work else "")
            + (" or the decode workers behind it" if limit is rows[0] else "") + ".")


def _classifier_alone_note(cell: Mapping[str, Any]) -> str:
    alone = cell["classifier_alone"]
    return (f"- {cell['device']} {cell['precision']} b{cell['batch_size']}: no detection reached "
            "the classification threshold on these images, so the pipeline's classifier stage "
            f"did not run; the classifier alone took {alone['ms_per_crop']:.0f} ms per crop "
            f"({alone['batch']} crop(s) per run, cut from {alone['image']}). Each detection at "
            "or above 0.1 costs that much: pass --images FOLDER with camera-trap photos to "
            "measure the whole pipeline.")


def _bar_rows(report: Mapping[str, Any]) -> list[tuple[str, dict[str, float]]]:
    rows = []
    for c in report["cells"]:
        if c.get("ok"):
            label = f"{c['device']} {c['precision']} b{c['batch_size']}"
            rows.append((label, {s: float(c["stage_ms_per_image"][s]) for s in STAGES}))
            if c.get("classifier_alone"):  # a bar of its own: per crop, not per image
                rows.append((f"{label}: 1 crop, alone",
                             {s: float(c["classifier_alone"]["ms_per_crop"])
                              if s == "classifier" else 0.0 for s in STAGES}))
    return rows


def render_chart(report: Mapping[str, Any], path: Path) -> str:
    """Stacked horizontal bars of per-image stage times per cell. Returns the renderer used."""
    rows = _bar_rows(report)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        render_chart_pil(rows, path, title=_chart_title(report))
        return "pil"
    fig, ax = plt.subplots(figsize=(10, 1.9 + 0.5 * max(len(rows), 1)))
    for y, (_, vals) in enumerate(rows):
        left = 0.0
        for s in STAGES:
            colour = tuple(ch / 255 for ch in STAGE_COLOURS[s])
            ax.barh(y, vals[s], left=left, color=colour,
                    label=STAGE_LABELS[s] if y == 0 else None)
            left += vals[s]
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    alone = any(label.endswith(", alone") for label, _ in rows)
    ax.set_xlabel("milliseconds of work per image"
                  + ("; per crop on the '1 crop, alone' bars" if alone else ""))
    ax.set_title(_chart_title(report))
    if rows:  # below the axis, so it never hides a bar
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize="small",
                  ncols=len(STAGES), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "matplotlib"


def _chart_title(report: Mapping[str, Any]) -> str:
    m = report["machine"]
    return f"edgenet bench: stage time per image ({m['cpu']}, ORT {m['onnxruntime']})"


def render_chart_pil(rows: Sequence[tuple[str, Mapping[str, float]]], path: Path,
                     title: str = "stage time per image") -> None:
    """A tiny stacked-bar renderer on PIL, for installs without matplotlib."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width, label_w, bar_h, gap, top = 1000, 170, 22, 10, 40
    legend_h = 30
    height = top + max(len(rows), 1) * (bar_h + gap) + 40 + legend_h
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black", font=font)
    total_max = max((sum(v.values()) for _, v in rows), default=0.0) or 1.0
    right = 80  # room for the total printed after the longest bar
    scale = (width - label_w - right) / total_max
    for i, (label, vals) in enumerate(rows):
        y = top + i * (bar_h + gap)
        d.text((10, y + 5), label, fill="black", font=font)
        x = float(label_w)
        for s in STAGES:
            w = vals.get(s, 0.0) * scale
            if w > 0:
                d.rectangle([x, y, x + w, y + bar_h], fill=STAGE_COLOURS[s])
            x += w
        d.text((x + 4, y + 5), f"{sum(vals.values()):.0f} ms", fill="black", font=font)
    axis_y = top + max(len(rows), 1) * (bar_h + gap)
    d.line([label_w, axis_y, width - right, axis_y], fill="black")
    for k in range(6):
        v = total_max * k / 5
        x = label_w + v * scale
        d.line([x, axis_y, x, axis_y + 4], fill="black")
        d.text((x - 10, axis_y + 6), f"{v:.0f}", fill="black", font=font)
    alone = any(label.endswith(", alone") for label, _ in rows)
    d.text((width // 2 - 60, axis_y + 18), "ms of work per image"
           + ("; per crop on the '1 crop, alone' bars" if alone else ""), fill="black", font=font)
    lx, ly = 10, height - legend_h + 5
    for s in STAGES:
        d.rectangle([lx, ly, lx + 14, ly + 14], fill=STAGE_COLOURS[s])
        d.text((lx + 18, ly + 2), STAGE_LABELS[s], fill="black", font=font)
        lx += 28 + 8 * len(STAGE_LABELS[s])
    img.save(path)


def write_outputs(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """bench.json, bench.md and bench.png in `out_dir` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md",
             "png": out_dir / "bench.png"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    render_chart(report, paths["png"])
    return paths


def load_report(path: str | Path) -> dict[str, Any]:
    """An earlier bench.json, or an InputError naming the file (checked before any run)."""
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read an earlier bench report: {exc}", path=path,
                         fix="pass a bench.json written by `edgenet bench`") from exc
    if not isinstance(old, dict) or not isinstance(old.get("cells"), list):
        raise InputError("not an edgenet bench report (no 'cells')", path=path,
                         fix="pass a bench.json written by `edgenet bench`")
    return old


def compare_reports(report: Mapping[str, Any], old_paths: Sequence[Path]) -> str:
    """Ratios new/old of images/s and of each stage's time, per matching cell."""
    lines = []
    for old_path in old_paths:
        old = load_report(old_path)
        by_key = {_cmp_key(c): c for c in old["cells"] if c.get("ok")}
        lines.append(f"compared with {old_path} ({old.get('created', '?')}, "
                     f"{(old.get('machine') or {}).get('cpu', '?')}):")
        lines.append("| cell | images/s old | images/s new | speed-up | "
                     + " | ".join(f"{STAGE_LABELS[s]} new/old" for s in STAGES) + " |")
        lines.append("|" + "---|" * (4 + len(STAGES)))
        for c in report["cells"]:
            o = by_key.get(_cmp_key(c))
            if not c.get("ok") or o is None:
                continue
            ratios = []
            for s in STAGES:
                a, b = c["stage_ms_per_image"][s], o["stage_ms_per_image"][s]
                ratios.append(f"{a / b:.2f}" if b > 0 else "-")
            lines.append(
                f"| {c['key']} | {o['images_per_s']:.3f} | {c['images_per_s']:.3f} | "
                f"{c['images_per_s'] / o['images_per_s']:.2f}x | " + " | ".join(ratios) + " |"
            )
    return "\n".join(lines) + "\n"


def _cmp_key(cell: Mapping[str, Any]) -> tuple[str, str, int]:
    return (str(cell.get("device")), str(cell.get("precision")), int(cell.get("batch_size", 0)))
