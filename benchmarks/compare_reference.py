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
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from side_by_side.agreement import (  # noqa: F401 - importable from here (tests, gpu_device.py)
    TOL,
    compare_one,
    compare_predictions,
    pair_detections,
    prediction_agreement,
)
from side_by_side.env_size import runtime_env_size, site_packages_size
from side_by_side.measure import (  # noqa: F401 - importable from here (tests)
    ColdJob,
    cold_start,
    cold_starts,
    machine_rate,
    prime,
    run_measured,
    steal_pct,
)
from side_by_side.table import (  # noqa: F401 - importable from here (tests)
    _images_per_s,
    _peak,
    render_table,
    steady_images_per_s,
    target_lines,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "images" / "speciesnet_test_data"
DEFAULT_WORK = REPO / "out" / "benchmarks"  # /out/ is git-ignored


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
