#!/usr/bin/env python
"""speciesnet 5.0.6 and edgenet, side by side, on the same weights, images and machine.

    python benchmarks/compare_reference.py                      # full-size synthetic weights
    python benchmarks/compare_reference.py --size tiny          # quick dry run of the tooling

What it does (see benchmarks/README.md):

(a) builds, or reuses, a synthetic SpeciesNet source folder (`edgenet models synth --size`) and
    its converted edgenet pack (`edgenet convert pack`, with fp16/int8 variants) under --work;
(b) runs the reference from its own venv (`$EDGENET_REFERENCE_PYTHON -m
    speciesnet.scripts.run_model --model SRC --instances_json I --predictions_json R
    --bypass_prompts`) and `edgenet run --model PACK --instances-json I --predictions-json P`
    for each requested precision, on the same images (../shared/images/speciesnet_test_data);
    each tool and row first runs ONE image unmeasured (`prime_s` in the JSON; `--no-prime`
    skips it): edgenet's first start after install writes its caches (the CPU's optimised
    graphs, other providers' mapped weights: NOTES.md entries 4, 17 and 24), once per model
    file, which a user pays once rather than every run; the reference's warms its files too;
(c) measures, per tool: end-to-end images/s (wall time of the whole command, start-up
    included), cold start (wall time of the same command on ONE image: process start to the
    first image done and written; the median of --cold-runs runs, 3 by default, run after
    the whole runs with the tools taking turns so that the VM's slow spells fall on all of
    them alike), peak RSS of the process tree (psutil polling, plus the kernel's wait4
    accounting), and the installed environment size (the reference venv's site-packages; for
    edgenet only its runtime distributions, found from its requirements and summed from
    their RECORD files). Beside them, how fast the machine was (`machine_rate`:
    onnxruntime's 3x3 Conv just before each whole run and at the end) and the hypervisor's
    steal over each run: this shared VM's speed drifts by up to a third, and the ratios are
    only as fair as that.
(d) compares the predictions image by image (same failures, detections count/category/bbox/
    conf within 1e-3, raw top-k classes with scores within 1e-3, identical
    processed_classification class and source);
(e) prints ONE Markdown table and writes compare.json (and compare.md) under --work.

`compare_predictions` and `build_source_and_pack` are importable (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "images" / "speciesnet_test_data"
DEFAULT_WORK = REPO / "out" / "benchmarks"  # /out/ is git-ignored
TOL = 1e-3


def reference_python() -> str | None:
    """$EDGENET_REFERENCE_PYTHON, else /work/refvenv/bin/python when it exists."""
    env = os.environ.get("EDGENET_REFERENCE_PYTHON")
    if env:
        return env
    default = Path("/work/refvenv/bin/python")
    return str(default) if default.exists() else None


def edgenet_cmd(python: str | None = None) -> list[str]:
    """`edgenet` from PYTHON's environment (default: this interpreter's), the console
    script, else -m."""
    python = python or sys.executable
    script = Path(python).parent / "edgenet"
    if script.exists():
        return [str(script)]
    return [python, "-m", "edgenet.cli"]


def runtime_versions(python: str) -> str:
    """E.g. "onnxruntime-openvino 1.24.1" (with "openvino X" where that is a distribution of its
    own): the runtime named in a row run by another venv."""
    code = ("from importlib import metadata as m\n"
            "out = []\n"
            "for d in ('onnxruntime-openvino', 'onnxruntime', 'openvino'):\n"
            "    try: out.append(f'{d} {m.version(d)}')\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(', '.join(out))")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return r.stdout.strip() if r.returncode == 0 else "?"


def compile_bytecode(package_dir: Path) -> bool:
    """Write the `.pyc` files of the package at PACKAGE_DIR; True when compileall succeeded.

    Why: the reference comes from a wheel, and pip compiles a wheel's modules when it
    installs it; edgenet measured from a source checkout (an editable install) has no
    bytecode until a run writes it, and none ever where PYTHONDONTWRITEBYTECODE is set (as on
    the machine of the README table), so each start would compile ~40 modules: 0.06 s of
    the cold start that `pip install .` users do not pay (benchmarks/NOTES.md, entry 18).
    """
    proc = subprocess.run([sys.executable, "-m", "compileall", "-q", str(package_dir)],
                          capture_output=True, text=True)
    return proc.returncode == 0


# ------------------------------------------------------------------------------------------
# (a) weights


def build_source_and_pack(
    work: Path, size: str = "full", *, variants: str = "fp16,int8", force: bool = False,
    log: Any = print,
) -> tuple[Path, Path]:
    """Synthetic SpeciesNet folder `work/synth_<size>` and its pack `work/pack_<size>`; each is
    built only when missing (or `force`): the full-size conversion takes minutes."""
    work.mkdir(parents=True, exist_ok=True)
    src, pack = work / f"synth_{size}", work / f"pack_{size}"
    if force or not (src / "info.json").is_file():
        log(f"building synthetic SpeciesNet folder {src} (--size {size})")
        _check_call([*edgenet_cmd(), "models", "synth", str(src), "--size", size, "--force"])
    if force or not (pack / "info.json").is_file():
        log(f"converting {src} -> {pack} (variants {variants})")
        _check_call([*edgenet_cmd(), "convert", "pack", str(src), str(pack), "--variants",
                     variants, "--force"])
    return src, pack


class StepFailed(RuntimeError):
    """A preparation command (synth, convert) failed; the message holds its output tail."""


def _check_call(cmd: Sequence[str]) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        raise StepFailed(f"command failed ({r.returncode}): {' '.join(cmd)}\n"
                         f"{(r.stdout + r.stderr)[-3000:]}")


def _folder_instances(images: Path) -> list[dict[str, Any]]:
    src = images / "instances.json"
    if src.is_file():
        data = json.loads(src.read_text(encoding="utf-8"))["instances"]
        instances = []
        for inst in data:
            if "://" in str(inst.get("filepath", "")):
                continue  # URLs: network time is not what we measure (and may be offline)
            inst = dict(inst)
            inst["filepath"] = str((images / Path(inst["filepath"]).name).resolve())
            instances.append(inst)
        return instances
    exts = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}
    return [{"filepath": str(p.resolve())} for p in sorted(images.iterdir())
            if p.suffix.lower() in exts]


def make_instances(images: Path | Sequence[Path], dst: Path, limit: int | None = None) -> Path:
    """An instances JSON with absolute paths, over one folder or several: a folder's own
    instances.json (countries kept, file paths re-rooted on the folder, URL instances left
    out) when present, else every image in it."""
    folders = [images] if isinstance(images, Path) else list(images)
    instances = [inst for folder in folders for inst in _folder_instances(Path(folder))]
    if limit is not None:
        instances = instances[:limit]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps({"instances": instances}, indent=1), encoding="utf-8")
    return dst


# ------------------------------------------------------------------------------------------
# (c) measuring a command


def _cpu_ticks() -> list[int] | None:
    """This machine's CPU time counters (/proc/stat's "cpu" line: user, nice, system, idle,
    iowait, irq, softirq, steal), or None where there is no /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    return [int(v) for v in fields[1:9]] if fields and fields[0] == "cpu" else None


def steal_pct(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share (%) of all CPUs' time between two `_cpu_ticks` readings that the hypervisor gave
    to other guests ("steal"): the part of a shared VM's noise that the guest can see."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after) - sum(before)
    return 100.0 * (after[7] - before[7]) / total if total > 0 else None


def machine_rate() -> float | None:
    """This machine's speed right now: the best GFLOP/s of onnxruntime's 3x3 Conv (256
    channels, 64 x 64; the kernel that dominates both models) over 20 runs of ~20 ms each.
    On a quiet 2-core VM of this kind ~245; a neighbour's load can take a third of it
    without showing as steal (benchmarks/NOTES.md, History of the README table)."""
    try:
        from edgenet.bench.peak import measure_matmul_peak

        return float(measure_matmul_peak(kind="conv", repeats=20)["best_gflops"])
    except Exception:  # noqa: BLE001 - informative only
        return None


def run_measured(cmd: Sequence[str], env: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
    """Run CMD; wall time, exit code, peak RSS of its process tree, output tail, and the
    hypervisor's steal over the run (`steal_pct`).

    RSS: psutil polling of the whole tree every 50 ms (sum over processes; `edgenet.bench.cell
    .TreeMonitor`, the same poller `edgenet bench` uses) when psutil is installed; and, on
    POSIX, the kernel's own peak of the largest process from wait4."""
    ticks0 = _cpu_ticks()
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(env) if env is not None else None)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        lambda: proc.stdout.read(65536), b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    from edgenet.bench.cell import TreeMonitor

    gpu = _GpuMemory()
    wait4_peak = None
    deadline = None if timeout is None else time.monotonic() + timeout
    with TreeMonitor(proc.pid) as tree:
        if hasattr(os, "wait4"):
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    wait4_peak = ru.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
                    break
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                time.sleep(0.02)
        else:  # pragma: no cover - Windows
            proc.wait(timeout=timeout)
        wall = time.perf_counter() - t0
    gpu.stop()
    reader.join(timeout=5)
    out = b"".join(chunks).decode("utf-8", "replace")
    return {
        "cmd": [str(c) for c in cmd],
        "returncode": proc.returncode,
        "wall_s": wall,
        "peak_rss_tree_mb": tree.peak_rss_mb or None,
        "peak_rss_wait4_mb": wait4_peak,
        "peak_gpu_mb": gpu.peak_mb,
        "cpu_steal_pct": steal_pct(ticks0, _cpu_ticks()),
        "output_tail": out[-2000:],
    }


class _GpuMemory:
    """Peak GPU memory in use while a command runs, above what was in use before it started
    (NVML through nvidia-ml-py, polled every 50 ms; GPU 0). Does nothing without NVML or a
    GPU: `peak_mb` stays None. One command at a time runs, so the difference is its own."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU: nothing to measure
            return
        base = pynvml.nvmlDeviceGetMemoryInfo(handle).used

        def poll() -> None:
            peak = 0
            while not self._stop.is_set():
                try:
                    peak = max(peak, pynvml.nvmlDeviceGetMemoryInfo(handle).used - base)
                except Exception:  # noqa: BLE001
                    break
                self.peak_mb = peak / 2**20
                self._stop.wait(0.05)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join(timeout=2)


_SIZE_SNIPPET = r'''
import json, os, re, sys, sysconfig
from importlib import metadata
mode, root = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
def tree_size(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total
if mode == "site":
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    print(json.dumps({"bytes": sum(tree_size(p) for p in paths), "paths": sorted(paths)}))
    raise SystemExit
def norm(n):
    return re.sub(r"[-_.]+", "-", n).lower()
try:
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None
def _installed(name):
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False
def deps(dist):
    out = []
    for spec in dist.requires or []:
        if Requirement is not None:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            out.append(req.name)
        elif "extra ==" not in spec:
            out.append(re.split(r"[ ;<>=!~\[(]", spec.strip(), 1)[0])
    return out
seen, todo, total, files = {}, [root], 0, 0
while todo:
    name = norm(todo.pop())
    if name in seen:
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        # edgenet requires "onnxruntime"; a GPU/OpenVINO/DirectML venv has a flavour instead
        flavours = [f"{name}-{f}" for f in ("openvino", "gpu", "directml")] \
            if name == "onnxruntime" else []
        todo.extend(f for f in flavours if f not in seen and _installed(f))
        seen[name] = None
        continue
    size = 0
    for f in dist.files or []:
        try:
            p = f.locate()
            if os.path.isfile(p) and not os.path.islink(p):
                size += os.path.getsize(p)
                files += 1
        except OSError:
            pass
    if name == norm(root):
        # editable installs list only a .pth: count the package folder itself
        try:
            import importlib.util
            spec = importlib.util.find_spec(root)
            if spec and spec.submodule_search_locations:
                for loc in spec.submodule_search_locations:
                    if "site-packages" not in loc:
                        size += tree_size(loc)
        except Exception:
            pass
    seen[name] = size
    total += size
    todo.extend(deps(dist))
print(json.dumps({"bytes": total, "files": files,
                  "distributions": {k: v for k, v in sorted(seen.items()) if v is not None}}))
'''


def runtime_env_size(python: str, root: str = "edgenet") -> dict[str, Any]:
    """Bytes installed for ROOT's runtime dependency closure in PYTHON's environment (extras
    excluded: torch/tensorflow/onnx are the `convert` extra, not what `edgenet run` needs)."""
    r = subprocess.run([python, "-c", _SIZE_SNIPPET, "closure", root], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"size probe failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout)


def site_packages_size(python: str) -> dict[str, Any]:
    """Bytes of PYTHON's whole site-packages (the reference's installed environment)."""
    r = subprocess.run([python, "-c", _SIZE_SNIPPET, "site"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"size probe failed: {r.stderr[-1000:]}")
    return json.loads(r.stdout)


# ------------------------------------------------------------------------------------------
# (d) predictions


def _close(a: Any, b: Any, tol: float = TOL) -> bool:
    try:
        return abs(float(a) - float(b)) <= tol
    except (TypeError, ValueError):
        return a == b


def _cmp_raw(where: str, r: Any, o: Any, problems: list[str]) -> None:
    if r is None and o is None:
        return
    if r is None or o is None:
        problems.append(f"{where}: raw_classifications present on one side only")
        return
    rc, oc = r.get("classes", []), o.get("classes", [])
    rs, os_ = r.get("scores", []), o.get("scores", [])
    if rc != oc:
        # Still a difference, but say which kind: classes ranked differently where their
        # scores agree within TOL (e.g. two classes at 0.0000 behind a top-1 of 1.0).
        tie = len(rs) == len(os_) and all(_close(a, b) for a, b in zip(rs, os_, strict=True))
        problems.append(f"{where}: top-k classes differ"
                        f"{' (order among classes with equal scores within 1e-3)' if tie else ''}"
                        f": {rc[:3]} {rs[:3]} vs {oc[:3]} {os_[:3]}")
    elif len(rs) != len(os_) or not all(_close(a, b) for a, b in zip(rs, os_, strict=True)):
        worst = max((abs(a - b) for a, b in zip(rs, os_, strict=False)), default=0.0)
        problems.append(f"{where}: raw scores differ (max {worst:.2e})")


def _same_detection(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    ab, bb = a.get("bbox") or [], b.get("bbox") or []
    return (a.get("category") == b.get("category") and _close(a.get("conf"), b.get("conf"))
            and len(ab) == len(bb) and all(_close(x, y) for x, y in zip(ab, bb, strict=True)))


def pair_detections(rd: Sequence[Mapping[str, Any]], od: Sequence[Mapping[str, Any]]
                    ) -> tuple[list[int], int]:
    """For each reference detection, the index of its edgenet counterpart; and the swaps.

    Both lists are sorted by confidence, so two detections whose confidences differ by less
    than the tolerance may come in either order from two fp32 implementations: that order is
    not a decision. A detection pairs with the one at the same index when they agree (category,
    conf and bbox within TOL), else with an unpaired agreeing one (a near-tie swap), else with
    the one at the same index (reported as a difference).
    """
    pairs: list[int] = []
    used: set[int] = set()
    swaps = 0
    for i, a in enumerate(rd):
        if i not in used and _same_detection(a, od[i]):
            j = i
        else:
            j = next((k for k in range(len(od)) if k not in used and k != i
                      and _same_detection(a, od[k])), i)
            swaps += j != i
        used.add(j)
        pairs.append(j)
    return pairs, swaps


def compare_one(ref: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """Differences between two predictions of the same image (empty: equal within TOL)."""
    fp = ref.get("filepath")
    problems: list[str] = []
    if sorted(ref.get("failures") or []) != sorted(ours.get("failures") or []):
        problems.append(f"{fp}: failures {ref.get('failures')} vs {ours.get('failures')}")
    for key in ("country", "admin1_region"):
        if ref.get(key) != ours.get(key):
            problems.append(f"{fp}: {key} {ref.get(key)!r} vs {ours.get(key)!r}")
    rd, od = ref.get("detections"), ours.get("detections")
    if (rd is None) != (od is None):
        problems.append(f"{fp}: detections present on one side only")
        return problems
    rd, od = rd or [], od or []
    if len(rd) != len(od):
        problems.append(f"{fp}: {len(rd)} vs {len(od)} detections")
        return problems
    pairs, _swaps = pair_detections(rd, od)
    for i, (a, j) in enumerate(zip(rd, pairs, strict=True)):
        b = od[j]
        where = f"{fp} det {i}" + (f" (edgenet det {j}, near-tie order)" if j != i else "")
        if a.get("category") != b.get("category"):
            problems.append(f"{where}: category {a.get('category')} vs {b.get('category')}")
        if not _close(a.get("conf"), b.get("conf")):
            problems.append(f"{where}: conf {a.get('conf')} vs {b.get('conf')}")
        ab, bb = a.get("bbox") or [], b.get("bbox") or []
        if len(ab) != len(bb) or not all(_close(x, y) for x, y in zip(ab, bb, strict=False)):
            problems.append(f"{where}: bbox {ab} vs {bb}")
        _cmp_raw(where, a.get("raw_classifications"), b.get("raw_classifications"), problems)
        pa, pb = a.get("processed_classification"), b.get("processed_classification")
        if (pa is None) != (pb is None):
            problems.append(f"{where}: processed_classification on one side only")
        elif pa is not None:
            if pa.get("class") != pb.get("class"):
                problems.append(f"{where}: processed class {pa.get('class')} vs "
                                f"{pb.get('class')}")
            if pa.get("source") != pb.get("source"):
                problems.append(f"{where}: processed source {pa.get('source')} vs "
                                f"{pb.get('source')}")
            if not _close(pa.get("score"), pb.get("score")):
                problems.append(f"{where}: processed score {pa.get('score')} vs "
                                f"{pb.get('score')}")
    return problems


def compare_predictions(ref: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    """Image-by-image comparison of two predictions files (dicts), keyed by filepath."""
    rmap = {p["filepath"]: p for p in ref.get("predictions", [])}
    omap = {p["filepath"]: p for p in ours.get("predictions", [])}
    problems: list[str] = []
    bad: set[str] = set()
    for fp, r in rmap.items():
        o = omap.get(fp)
        if o is None:
            problems.append(f"{fp}: missing from edgenet's predictions")
            bad.add(fp)
            continue
        diff = compare_one(r, o)
        if diff:
            bad.add(fp)
            problems += diff
    for fp in omap.keys() - rmap.keys():
        problems.append(f"{fp}: only in edgenet's predictions")
        bad.add(fp)
    return {"images": len(rmap), "mismatched_images": len(bad), "problems": problems,
            "detections": sum(len(p.get("detections") or []) for p in rmap.values())}


def _detection_rows(dets: Sequence[Mapping[str, Any]]) -> Any:
    """Detections as the converter's fidelity rows [x1, y1, x2, y2, conf, category]."""
    import numpy as np

    return np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
                      d["bbox"][1] + d["bbox"][3], d["conf"], int(d["category"])]
                     for d in dets], dtype=np.float64).reshape(-1, 6)


def _top1(det: Mapping[str, Any]) -> Any:
    classes = (det.get("raw_classifications") or {}).get("classes") or []
    return classes[0] if classes else None


def _processed(det: Mapping[str, Any]) -> Any:
    return (det.get("processed_classification") or {}).get("class")


def prediction_agreement(base: Mapping[str, Any], test: Mapping[str, Any],
                         min_conf: float = 0.1, iou: float = 0.5) -> dict[str, Any]:
    """How close TEST's predictions file is to BASE's (e.g. bf16 to fp32) on the same images,
    in the terms of the converter's fidelity report: detections at conf >= MIN_CONF (those
    the classifier and ensemble use) matched one to one (same category, IoU > IOU, greedily
    in BASE's confidence order): recall and precision; over the matched pairs that both
    classified: top-1 class agreement and the same `processed_classification` class (the
    ensemble's decision for that detection)."""
    from converters.fidelity import match_detections

    bmap = {p["filepath"]: p for p in base.get("predictions", [])}
    tmap = {p["filepath"]: p for p in test.get("predictions", [])}
    n_base = n_test = matched = classified = same_top1 = same_processed = images = 0
    for fp, b in bmap.items():
        t = tmap.get(fp)
        if t is None:
            continue
        images += 1
        bd = [d for d in b.get("detections") or [] if d.get("conf", 0) >= min_conf]
        td = [d for d in t.get("detections") or [] if d.get("conf", 0) >= min_conf]
        n_base, n_test = n_base + len(bd), n_test + len(td)
        # The converter's matching (greedy by BASE's confidence, same category, IoU > IOU).
        for i, j, _ in match_detections(_detection_rows(bd), _detection_rows(td), iou):
            matched += 1
            d, e = bd[i], td[j]
            if _top1(d) is not None and _top1(e) is not None:
                classified += 1
                same_top1 += _top1(d) == _top1(e)
                same_processed += _processed(d) == _processed(e)
    out: dict[str, Any] = {"images": images, "min_conf": min_conf, "base_detections": n_base,
           "test_detections": n_test, "matched": matched,
           "recall": matched / n_base if n_base else 1.0,
           "precision": matched / n_test if n_test else 1.0,
           "classified_pairs": classified,
           "top1_agreement": same_top1 / classified if classified else 1.0,
           "processed_agreement": same_processed / classified if classified else 1.0}
    out["text"] = (f"det R/P {out['recall']:.2f}/{out['precision']:.2f}, top1 "
                   f"{out['top1_agreement']:.2f} (vs the fp32 row's predictions)")
    return out


# ------------------------------------------------------------------------------------------
# (b) running both, (e) the table


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


def _machine() -> dict[str, Any]:
    try:
        from edgenet.bench import machine_info

        return machine_info()
    except Exception:  # noqa: BLE001 - informative only
        import platform

        return {"cpu": platform.processor(), "logical_cores": os.cpu_count()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="build/output folder")
    p.add_argument("--size", choices=["tiny", "full"], default="full")
    p.add_argument("--images", type=Path, action="append", default=None,
                   help="image folder (repeat for several; default: speciesnet_test_data)")
    p.add_argument("--reference-python", default=reference_python())
    p.add_argument("--precisions", default="fp32,int8", help="edgenet precisions to run")
    p.add_argument("--batch-size", type=int, default=None, help="edgenet --batch-size")
    p.add_argument("--edgenet-args", default="", help="extra args for `edgenet run`")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--no-cold", action="store_true", help="skip the one-image runs")
    p.add_argument("--no-prime", action="store_true",
                   help="no unmeasured one-image run before each tool's whole run (to measure "
                        "a first start after install, caches unwritten)")
    p.add_argument("--cold-runs", type=int, default=3,
                   help="one-image runs per tool; the table shows their median (default 3: "
                        "this kind of VM varies by 0.3-1.5 s between identical runs)")
    p.add_argument("--force", action="store_true", help="rebuild the weights and pack")
    p.add_argument("--source", type=Path, default=None,
                   help="an existing SpeciesNet model folder (with --pack: nothing is built)")
    p.add_argument("--pack", type=Path, default=None, help="its converted edgenet pack")
    p.add_argument("--openvino-python", default=None,
                   help="a Python with edgenet and onnxruntime-openvino installed: adds rows "
                        "run by it with --device openvino (one venv cannot hold both "
                        "onnxruntime builds)")
    p.add_argument("--openvino-precisions", default="fp32,bf16",
                   help="precisions of the OpenVINO rows (bf16: CPUs with AVX512_BF16/AMX)")
    p.add_argument("--no-env-size", action="store_true",
                   help="skip the installed-size column (e.g. a shared, preinstalled Python)")
    a = p.parse_args(argv)

    work: Path = a.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        if (a.source is None) != (a.pack is None):
            raise StepFailed("--source and --pack go together")
        src, pack = (a.source, a.pack) if a.source is not None else build_source_and_pack(
            work, a.size, force=a.force)
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folders = a.images or [DEFAULT_IMAGES]
    instances = make_instances(folders, work / "instances.json")
    one = make_instances(folders, work / "instances_one.json", limit=1)
    n = len(json.loads(instances.read_text())["instances"])
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "size": a.size, "images": n,
                              "images_dir": " + ".join(str(f) for f in folders),
                              "machine": _machine(), "source": str(src), "pack": str(pack),
                              "rows": rows}
    env = dict(os.environ)
    ref_preds = None

    cold_jobs: list[tuple[dict[str, Any], ColdJob]] = []
    if not a.skip_reference:
        if not a.reference_python or not (Path(a.reference_python).exists()
                                          or shutil.which(a.reference_python)):
            raise SystemExit("reference python not found: set EDGENET_REFERENCE_PYTHON or "
                             "pass --reference-python (or --skip-reference)")

        def ref_cmd(inst: Path, out: Path) -> list[str]:
            return [a.reference_python, "-m", "speciesnet.scripts.run_model", "--model",
                    str(src), "--instances_json", str(inst), "--predictions_json", str(out),
                    "--bypass_prompts"]

        out = work / "reference.json"
        out.unlink(missing_ok=True)
        print("running speciesnet 5.0.6 ...", file=sys.stderr, flush=True)
        primed = None if a.no_prime else prime(functools.partial(ref_cmd, one),
                                               work / "reference_prime.json", env)
        rate = machine_rate()
        run = run_measured(ref_cmd(instances, out), env)
        row = {"name": "speciesnet 5.0.6 (PyTorch)", **_row_numbers(run, n),
               "machine_conv_gflops_before": rate, "prime_s": primed}
        if run["returncode"] == 0 and out.is_file():
            ref_preds = json.loads(out.read_text())
        else:
            row["error"] = run["output_tail"][-800:]
        if not a.no_cold:
            cold_jobs.append((row, (lambda out: ref_cmd(one, out), work / "reference_one.json")))
        if not a.no_env_size:
            row["env_bytes"] = site_packages_size(a.reference_python)["bytes"]
        row["run"] = run
        rows.append(row)

    env_size = ({"bytes": None, "distributions": None} if a.no_env_size
                else runtime_env_size(sys.executable))
    import edgenet

    result["edgenet_bytecode_compiled"] = compile_bytecode(Path(edgenet.__file__).parent)
    from edgenet.bench import fidelity_summary

    info = json.loads((pack / "info.json").read_text())
    configs = [EdgenetRow(f"edgenet {prec}", f"edgenet_{prec}", prec, edgenet_cmd(), [],
                          env_size)
               for prec in _split(a.precisions)]
    if a.openvino_python:
        ov_size = ({"bytes": None, "distributions": None} if a.no_env_size
                   else runtime_env_size(a.openvino_python))
        label = runtime_versions(a.openvino_python)
        configs += [EdgenetRow(f"edgenet {prec} (OpenVINO: {label})", f"edgenet_ov_{prec}", prec,
                               edgenet_cmd(a.openvino_python), ["--device", "openvino"], ov_size)
                    for prec in _split(a.openvino_precisions)]
    fp32_preds = None
    for cfg in configs:
        def ours_cmd(inst: Path, out: Path, cfg: EdgenetRow = cfg) -> list[str]:
            cmd = [*cfg.command, "run", "--model", str(pack), "--instances-json", str(inst),
                   "--predictions-json", str(out), "--precision", cfg.precision, "--quiet",
                   *cfg.args]
            if a.batch_size:
                cmd += ["--batch-size", str(a.batch_size)]
            return cmd + a.edgenet_args.split()

        out = work / f"{cfg.stem}.json"
        out.unlink(missing_ok=True)
        print(f"running {cfg.name} ...", file=sys.stderr, flush=True)
        primed = None if a.no_prime else prime(functools.partial(ours_cmd, one),
                                               work / f"{cfg.stem}_prime.json", env)
        rate = machine_rate()
        run = run_measured(ours_cmd(instances, out), env)
        fidelity = fidelity_summary(pack, info, cfg.precision)["text"]
        row = {"name": cfg.name, "precision": cfg.precision, **_row_numbers(run, n),
               "fidelity": fidelity, "machine_conv_gflops_before": rate, "prime_s": primed}
        if run["returncode"] != 0 or not out.is_file():
            row["error"] = run["output_tail"][-800:]
        else:
            preds = json.loads(out.read_text())
            if ref_preds is not None:
                cmp = compare_predictions(ref_preds, preds)
                row["comparison"] = cmp
                row["agreement"] = ("identical (within 1e-3)" if cmp["mismatched_images"] == 0
                                    else f"{cmp['mismatched_images']}/{cmp['images']} images "
                                         "differ")
            if cfg.precision == "fp32" and not cfg.args:  # the default runtime's fp32 row
                fp32_preds = preds
            elif fp32_preds is not None:
                agree = prediction_agreement(fp32_preds, preds)
                row["prediction_agreement"] = agree
                if cfg.args or cfg.precision == "bf16":
                    # No conversion-time report covers another runtime or bf16: this row's
                    # column shows its agreement with the fp32 row's predictions instead.
                    row["fidelity"] = agree["text"]
        if not a.no_cold:
            cold_jobs.append((row, (functools.partial(ours_cmd, one),
                                    work / f"{cfg.stem}_one.json")))
        row["env_bytes"] = cfg.env_size["bytes"]
        row["env_distributions"] = cfg.env_size["distributions"]
        row["run"] = run
        rows.append(row)

    if cold_jobs:  # after the whole runs, all tools' one-image runs interleaved
        print("running the one-image (cold start) runs, the tools taking turns ...",
              file=sys.stderr, flush=True)
        for (row, _), got in zip(cold_jobs, cold_starts([job for _, job in cold_jobs], env,
                                                        a.cold_runs), strict=True):
            row.update(got)
    result["machine_conv_gflops_after"] = machine_rate()

    table = render_table(result)
    (work / "compare.json").write_text(json.dumps(result, indent=1, default=str),
                                       encoding="utf-8")
    (work / "compare.md").write_text(table, encoding="utf-8")
    print(table)
    for row in rows:
        if row.get("error"):
            print(f"{row['name']} FAILED:\n{row['error']}", file=sys.stderr)
        for prob in (row.get("comparison") or {}).get("problems", [])[:20]:
            print(f"{row['name']}: {prob}", file=sys.stderr)
    print(f"wrote {work / 'compare.json'} and {work / 'compare.md'}", file=sys.stderr)
    return 0 if all(not r.get("error") for r in rows) else 1


ColdJob = tuple[Callable[[Path], list[str]], Path]  # (command for an output path, output)


@dataclass
class EdgenetRow:
    """One edgenet row of the table: how to run it and what to call it."""

    name: str
    stem: str  # output file stem under --work
    precision: str
    command: list[str]  # `edgenet` of the Python that runs this row
    args: list[str]  # extra `edgenet run` arguments (e.g. --device openvino)
    env_size: Mapping[str, Any]


def _split(csv: str) -> list[str]:
    return [x.strip() for x in csv.split(",") if x.strip()]


def prime(cmd_for: Callable[[Path], list[str]], out: Path, env: Mapping[str, str]
          ) -> float | None:
    """One unmeasured run of CMD_FOR(OUT) before a tool's whole run, so that a first start's
    one-off work (edgenet's cache writes) is not counted as every run's; its wall time, or
    None where it failed (the whole run then shows the error)."""
    out.unlink(missing_ok=True)
    run = run_measured(cmd_for(out), env)
    out.unlink(missing_ok=True)
    return run["wall_s"] if run["returncode"] == 0 else None


def cold_starts(jobs: Sequence[ColdJob], env: Mapping[str, str],
                runs: int = 3) -> list[dict[str, Any]]:
    """Each job's one-image command `runs` times, the tools taking turns (job order reversed
    every other round: A B C, C B A, A B C), so a slow spell of this shared VM falls on every
    tool alike instead of on whichever ran its cold starts then. Each run starts without its
    output (so it does the work). Per job: {"cold_start_s": median wall time of the runs
    that succeeded (None if none did), "cold_start_runs_s": every run's wall time, None for
    a failed run}."""
    walls: list[list[float | None]] = [[] for _ in jobs]
    steals: list[list[float | None]] = [[] for _ in jobs]
    for r in range(max(1, runs)):
        order = list(range(len(jobs)))
        for i in order if r % 2 == 0 else order[::-1]:
            cmd_for, out = jobs[i]
            out.unlink(missing_ok=True)
            run = run_measured(cmd_for(out), env)
            walls[i].append(run["wall_s"] if run["returncode"] == 0 and out.is_file() else None)
            steals[i].append(run["cpu_steal_pct"])
    results = []
    for job_walls, job_steals in zip(walls, steals, strict=True):
        ok = [w for w in job_walls if w is not None]
        results.append({"cold_start_s": statistics.median(ok) if ok else None,
                        "cold_start_runs_s": job_walls, "cold_start_steal_pct": job_steals})
    return results


def cold_start(cmd_for: Callable[[Path], list[str]], out: Path, env: Mapping[str, str],
               runs: int = 3) -> dict[str, Any]:
    """One command's cold starts (`cold_starts` with one job)."""
    return cold_starts([(cmd_for, out)], env, runs)[0]


def _row_numbers(run: Mapping[str, Any], n: int) -> dict[str, Any]:
    return {"wall_s": run["wall_s"], "images_per_s": _images_per_s(run, n),
            "peak_rss_mb": _peak(run), "peak_gpu_mb": run.get("peak_gpu_mb"),
            "cpu_steal_pct": run.get("cpu_steal_pct"), "returncode": run["returncode"]}


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_source_and_pack", "compare_predictions", "prediction_agreement", "compare_one",
           "make_instances",
           "run_measured", "cold_start", "compile_bytecode", "runtime_env_size", "target_lines",
           "site_packages_size", "render_table", "main"]
