"""The side-by-side table (the README leads with it) and the issue's targets judged from
the same run's numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _images_per_s(run: Mapping[str, Any], n: int) -> float | None:
    return n / run["wall_s"] if run.get("returncode") == 0 and run["wall_s"] > 0 else None


def steady_images_per_s(row: Mapping[str, Any], n: int) -> float | None:
    """Images per second once started: (n - 1) / (wall of n images - wall of one image).

    The one-image run is the same command's start-up plus one image, so the difference is the
    time the other n - 1 images took. On a GPU, start-up (CUDA context, sessions, first-shape
    warm-up) is seconds and a season's run is hours, so this is the rate a long run sees; the
    wall-time column keeps the start-up in.
    """
    wall, cold = row.get("wall_s"), row.get("cold_start_s")
    if n < 2 or not wall or not cold or row.get("returncode") != 0 or wall <= cold:
        return None
    return (n - 1) / (wall - cold)


def _peak(run: Mapping[str, Any]) -> float | None:
    vals = [v for v in (run.get("peak_rss_tree_mb"), run.get("peak_rss_wait4_mb")) if v]
    return max(vals) if vals else None


def render_table(result: Mapping[str, Any]) -> str:
    """The one side-by-side table (README leads with it)."""
    m = result["machine"]
    gpus = ", ".join(g.get("name", "?") for g in m.get("gpus") or [])
    with_gpu = any(r.get("peak_gpu_mb") is not None for r in result["rows"])
    lines = [
        f"{result['images']} images ({result['images_dir']}), {result['size']}-size synthetic "
        f"weights; {m.get('cpu')}, {m.get('usable_cores', m.get('logical_cores'))} cores"
        f"{', ' + gpus if gpus else ''}, onnxruntime {m.get('onnxruntime')}; "
        f"{result['created']}",
        "",
        "| | images/s (wall, incl. start-up) | speed-up | wall (s) | cold start, 1 image (s) "
        f"| peak RSS (MB) |{' peak GPU memory (MB) |' if with_gpu else ''} installed env (MB) "
        "| predictions vs speciesnet | fidelity vs fp32 |",
        f"|---|---|---|---|---|---|{'---|' if with_gpu else ''}---|---|---|",
    ]
    n = result["images"]
    steady = [steady_images_per_s(row, n) for row in result["rows"]]
    with_steady = any(v is not None for v in steady)
    if with_steady:  # a column after cold start: images/s once started, and its ratio
        lines[2] = lines[2].replace(
            "cold start, 1 image (s) |",
            "cold start, 1 image (s) | images/s after start-up | speed-up after start-up |")
        lines[3] += "---|---|"
    ref_ips = ref_steady = None
    for row, st in zip(result["rows"], steady, strict=True):
        if row["name"].startswith("speciesnet"):
            ref_ips, ref_steady = row.get("images_per_s"), st

    def f(v: Any, d: int = 2) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    for row, st in zip(result["rows"], steady, strict=True):
        ips = row.get("images_per_s")
        speed = f"{ips / ref_ips:.2f}x" if ips and ref_ips else "-"
        after = ""
        if with_steady:
            ratio = f"{st / ref_steady:.2f}x" if st and ref_steady else "-"
            after = f"{f(st, 3)} | {ratio} | "
        env_mb = row.get("env_bytes")
        lines.append(
            f"| {row['name']} | {f(ips, 3)} | {speed} | {f(row.get('wall_s'), 1)} | "
            f"{f(row.get('cold_start_s'), 1)} | {after}{f(row.get('peak_rss_mb'), 0)} | "
            f"{f(row.get('peak_gpu_mb'), 0) + ' | ' if with_gpu else ''}"
            f"{f(env_mb / 2**20 if env_mb else None, 0)} | {row.get('agreement', '-')} | "
            f"{row.get('fidelity', '-')} |"
        )
    rates = [(row["name"], row.get("machine_conv_gflops_before")) for row in result["rows"]]
    if any(r is not None for _, r in rates):
        lines += ["", "The machine's speed just before each whole run (onnxruntime's 3x3 Conv, "
                  "GFLOP/s; `machine_rate`): " + "; ".join(
                      f"{name} {'-' if r is None else f'{r:.0f}'}" for name, r in rates)
                  + (f"; at the end {result['machine_conv_gflops_after']:.0f}"
                     if result.get("machine_conv_gflops_after") is not None else "") + "."]
    steal = [(row["name"], row.get("cpu_steal_pct"), row.get("cold_start_steal_pct") or [])
             for row in result["rows"]]
    if any(s is not None for _, s, _ in steal):
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}%"

        lines += ["", "CPU time the hypervisor gave to other guests (steal, /proc/stat) during "
                  "each whole run, then each one-image run: " + "; ".join(
                      f"{name} {pct(s)}" + (f" ({', '.join(pct(c) for c in colds)})"
                                            if colds else "")
                      for name, s, colds in steal) + "."]
    targets = target_lines(result)
    if targets:
        lines += ["", *targets]
    return "\n".join(lines) + "\n"


def _row_precision(row: Mapping[str, Any]) -> str:
    """A row's precision: its own field, else the word after "edgenet" in its name."""
    if row.get("precision"):
        return str(row["precision"])
    words = str(row.get("name", "")).split()
    return words[1] if len(words) > 1 else "?"


def target_lines(result: Mapping[str, Any]) -> list[str]:
    """The issue's CPU targets, each judged from this run's numbers (not from a document):
    fp32 >= 1.3x the reference's images/s with identical predictions, other precisions >=
    2.5x, cold start <= 1/3 of the reference's, installed environment <= 1/10, peak RSS no
    higher; on a machine with a GPU, every precision >= 10x. Empty when the run has no
    reference row."""
    rows = list(result.get("rows") or [])
    ref = next((r for r in rows if str(r.get("name", "")).startswith("speciesnet")), None)
    if ref is None or not ref.get("images_per_s"):
        return []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**not met**")

    gpu = bool((result.get("machine") or {}).get("gpus"))
    out = [f"Targets (issue 4{', on a GPU' if gpu else ''}), judged from this run:"]
    for row in rows:
        if row is ref or row.get("returncode") != 0 or not row.get("images_per_s"):
            continue
        prec = _row_precision(row)
        speed = row["images_per_s"] / ref["images_per_s"]
        need = 10.0 if gpu else (1.3 if prec == "fp32" else 2.5)
        same = str(row.get("agreement", "")).startswith("identical")
        speed_ok = speed >= need and (same or prec != "fp32" or gpu)
        cold, ref_cold = row.get("cold_start_s"), ref.get("cold_start_s")
        cold_ok = cold <= ref_cold / 3 if cold and ref_cold else None
        env, ref_env = row.get("env_bytes"), ref.get("env_bytes")
        env_ok = env <= ref_env / 10 if env and ref_env else None
        rss, ref_rss = row.get("peak_rss_mb"), ref.get("peak_rss_mb")
        rss_ok = rss <= ref_rss if rss and ref_rss else None
        parts = [f"speed {speed:.2f}x (>= {need:g}x"
                 + (", identical predictions" if prec == "fp32" and not gpu else "") + "): "
                 + verdict(speed_ok)]
        parts.append("cold start " + (f"{cold / ref_cold:.2f}x" if cold and ref_cold else "-")
                     + " (<= 0.33x): " + verdict(cold_ok))
        parts.append("installed " + (f"{env / ref_env:.3f}x" if env and ref_env else "-")
                     + " (<= 0.1x): " + verdict(env_ok))
        parts.append("peak RSS " + (f"{rss / ref_rss:.2f}x" if rss and ref_rss else "-")
                     + " (<= 1x): " + verdict(rss_ok))
        out.append(f"- {row['name']}: " + "; ".join(parts) + ".")
    return out
