#!/usr/bin/env python
"""The GPU side-by-side run, on a lent machine that reaches no network (the `device` tool).

Such a machine has CUDA, PyTorch and a CPU-only onnxruntime, nothing of speciesnet's own
dependencies, no TensorFlow (so the synthetic classifier cannot be rebuilt there), and takes
at most ~60 MB of files per call. So the run is staged:

    python benchmarks/gpu_device.py payload                  # here: writes .gpu/call1..N
    python3 benchmarks/gpu_device.py receive K               # there, once per call K = 1..N
    python3 benchmarks/gpu_device.py bench                   # there, after the last part

`payload` packs, in this order, the pure-Python wheels speciesnet 5.0.6 needs beyond what the
machine has (.gpu/wheels, fetched with `pip download --no-deps`), the 14 speciesnet test images,
the label/taxonomy/geofence files of the local full-size synthetic folder, its classifier
(`.pt`, stored as fp16 to halve the transfer; cast back to fp32 there, so both tools read the
same fp32 weights), and onnxruntime-gpu (its CUDA provider library xz-compressed, the unused C
API library left out) into one byte stream cut into parts of PART_BYTES.

`receive K` appends part K to the stream under /tmp/gpu, unpacks every file that is complete,
and, once the wheels, images and metadata are there, starts `build` in its own session (it
outlives the call): it builds the full-size synthetic detector there (same code and seed,
calibrated on the 14 images: the weights differ from the local build, but both tools read
the same files), assembles the SpeciesNet folder and converts it with `edgenet convert pack`
(fp16 variant). `bench` waits for that, then runs `benchmarks/compare_reference.py` on the GPU
twice (the 14 images copied 24 times, with cold starts, for speed with each tool at its
defaults; the 14 images with TF32 off on both sides for fidelity) plus `edgenet bench` on the
copied set, and copies the tables to $OUT. `probe` (after `bench`, or instead of it) measures
each model alone under CUDA option variants (`benchmarks/gpu_probe.py`) and times whole
`edgenet run`s with `EDGENET_CUDA_OPTIONS` set to the ones it is about. `fidelity` (after
`bench`) runs both tools on the CPU there and compares each tool's GPU output with its own.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / ".gpu"  # wheels/ and clf/ live here; git-ignored through .git/info/exclude
SYNTH = REPO / "out" / "benchmarks" / "synth_full"
SHARED = REPO.parent / "shared"
PART_BYTES = 58_000_000  # + the ~5 MB working tree stays under the tool's 64 MiB per call
ROOT = Path("/tmp/gpu")  # on the device
# EDGENET_GPU_DRY=1 rehearses the whole staging here, on the CPU, with tiny weights (the
# device time is too short to debug there): payload --synth out/benchmarks/synth_tiny, then
# receive/bench with this interpreter.
DRY = os.environ.get("EDGENET_GPU_DRY") == "1"
SIZE = "tiny" if DRY else "full"
DEVICE = "cpu" if DRY else "cuda"
# throughput set: the 14 test images x COPIES
COPIES = int(os.environ.get("EDGENET_GPU_COPIES", 2 if DRY else 24))
PARTS = REPO / (".gpu-dry" if DRY else ".gpu")  # callK/ folders, one per device call
# What the device's image has and a dev venv lacks (pandas, scipy, ...), for the rehearsal.
EXTRA = ":" + os.environ["EDGENET_GPU_DRY_EXTRA"] if os.environ.get("EDGENET_GPU_DRY_EXTRA") else ""
# A session whose device time must hold bench, probe and fidelity in one call trims them:
# one-image runs per tool in `bench` (compare_reference's --cold-runs; 3 by default there),
# `probe`'s steps (pyspy, alone, runs) and which whole runs it times, in the order given
# (labels as in `probe`, each `label:precision`; default: all, most wanted first).
COLD_RUNS = os.environ.get("EDGENET_GPU_COLD_RUNS", "3")
PROBE_STEPS = set(os.environ.get("EDGENET_GPU_PROBE_STEPS", "pyspy,alone,runs").split(","))
PROBE_RUNS = [r for r in os.environ.get("EDGENET_GPU_PROBE_RUNS", "").split(",") if r]
# ... and `bench`'s: its edgenet precisions (fp16 was slower than fp32 in both GPU runs,
# entries 9 and 20) and its steps (speed: the big comparison; fidelity14: the 14 images with
# TF32 off; stages: `edgenet bench` on the big set).
PRECISIONS = os.environ.get("EDGENET_GPU_PRECISIONS", "fp32,fp16")
BENCH_STEPS = set(os.environ.get("EDGENET_GPU_BENCH_STEPS", "speed,fidelity14,stages").split(","))
# `probe`'s `alone` step: which CUDA option sets gpu_probe.py times each model under (its first
# run per set is the cold start's largest part on a GPU: entry 23, the classifier's 5 s)
ALONE_VARIANTS = os.environ.get("EDGENET_GPU_ALONE_VARIANTS",
                                "default,nhwc,no_search,exhaustive,graph")
# ... and which of the pack's model files (gpu_probe.py --only: parts of file names, comma-
# separated; all by default), e.g. `always_crop_synth_full.onnx` for the fp32 classifier alone
ALONE_ONLY = os.environ.get("EDGENET_GPU_ALONE_ONLY", "")


# ------------------------------------------------------------------------------ here


def _tar_bytes(members: list[tuple[Path, str]], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz" if compress else "w") as tar:
        for path, name in members:
            tar.add(path, arcname=name)
    return buf.getvalue()


def payload(ort_wheel: Path, synth: Path = SYNTH) -> None:
    import zipfile

    files: list[tuple[str, bytes]] = []
    wheels = sorted((LOCAL / "wheels").glob("*.whl"))
    files.append(("wheels.tar", _tar_bytes([(w, w.name) for w in wheels])))
    imgs = SHARED / "images" / "speciesnet_test_data"
    files.append(("images.tar", _tar_bytes([(imgs, "speciesnet_test_data")])))
    info = json.loads((synth / "info.json").read_text())
    meta = [(synth / info[k], info[k]) for k in ("classifier_labels", "taxonomy", "geofence")]
    meta.append((SHARED / "data" / "speciesnet", "data_speciesnet"))
    files.append(("meta.tar", _tar_bytes(meta)))
    clf16 = LOCAL / "clf" / (Path(info["classifier"]).stem + ".fp16.pt")
    if not clf16.is_file():
        raise SystemExit(f"missing {clf16}: write it with the reference venv's torch "
                         "(torch.load(...).half(); torch.save)")
    files.append(("classifier.fp16.pt", clf16.read_bytes()))
    big = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
    skip = {big, "onnxruntime/capi/libonnxruntime.so." + ort_wheel.name.split("-")[1]}
    rest = io.BytesIO()
    with zipfile.ZipFile(ort_wheel) as zf, tarfile.open(fileobj=rest, mode="w:xz") as tar:
        for item in zf.infolist():
            if item.is_dir() or item.filename in skip:
                continue
            data = zf.read(item)
            ti = tarfile.TarInfo(item.filename)
            ti.size, ti.mode = len(data), 0o755 if item.filename.endswith(".so") else 0o644
            tar.addfile(ti, io.BytesIO(data))
        cuda = zf.read(big)
    files.append(("ort_rest.tar.xz", rest.getvalue()))
    cached = LOCAL / "ort_cuda.so.xz"  # minutes to compress: kept
    if not cached.is_file():
        cached.write_bytes(lzma.compress(cuda, preset=9 | lzma.PRESET_EXTREME))
    files.append(("ort_cuda.so.xz", cached.read_bytes()))

    write_parts(files, PARTS, PART_BYTES)


def write_parts(files: list[tuple[str, bytes]], parts_dir: Path, part_bytes: int) -> int:
    """FILES (name, bytes), in order, as one stream cut into `parts_dir/callK/part` files of
    PART_BYTES with a manifest each (offset, size and sha256 of every file); returns K."""
    stream = b"".join(data for _, data in files)
    manifest: list[dict[str, object]] = []
    offset = 0
    for name, data in files:
        manifest.append({"name": name, "offset": offset, "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    parts = (len(stream) + part_bytes - 1) // part_bytes
    for k in range(parts):
        d = parts_dir / f"call{k + 1}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        (d / "part").write_bytes(stream[k * part_bytes:(k + 1) * part_bytes])
        (d / "manifest.json").write_text(json.dumps(
            {"part": k + 1, "parts": parts, "part_bytes": part_bytes, "files": manifest}))
    print(f"{len(stream) / 1e6:.1f} MB in {parts} parts: " + ", ".join(
        f"{name} {len(data) / 1e6:.1f} MB" for name, data in files))
    return parts


# ------------------------------------------------------------------------------ there


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _unpack_ready(manifest: dict) -> list[str]:
    stream = ROOT / "stream"
    have = stream.stat().st_size if stream.exists() else 0
    done = []
    for m in manifest["files"]:
        flag = ROOT / "files" / (m["name"] + ".ok")
        if flag.exists() or m["offset"] + m["size"] > have:
            continue
        with open(stream, "rb") as f:
            f.seek(m["offset"])
            data = f.read(m["size"])
        if hashlib.sha256(data).hexdigest() != m["sha256"]:
            raise SystemExit(f"{m['name']}: sha256 mismatch")
        (ROOT / "files").mkdir(parents=True, exist_ok=True)
        (ROOT / "files" / m["name"]).write_bytes(data)
        flag.touch()
        done.append(m["name"])
    return done


def _nvidia_lib_dirs() -> list[str]:
    import site

    dirs = []
    for sp in site.getsitepackages():
        dirs += sorted(str(p) for p in Path(sp, "nvidia").glob("**/lib") if p.is_dir())
    return dirs


def receive(k: int) -> None:
    src = PARTS / f"call{k}"
    manifest = json.loads((src / "manifest.json").read_text())
    ROOT.mkdir(parents=True, exist_ok=True)
    got = ROOT / "parts_received"
    received = int(got.read_text()) if got.exists() else 0
    if k != received + 1:
        raise SystemExit(f"part {k} arrived after part {received}: send them in order")
    with open(ROOT / "stream", "ab") as out, open(src / "part", "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 22)
    got.write_text(str(k))
    (src / "part").unlink()
    new = _unpack_ready(manifest)
    _log(f"part {k}/{manifest['parts']} in; unpacked {new or 'nothing new'}")
    files = ROOT / "files"
    if "meta.tar" in new:
        site = ROOT / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--target", str(site), *[str(p) for p in _untar(
                            files / "wheels.tar", ROOT / "wheels").glob("*.whl")]], check=True)
        shared = ROOT / "shared"
        _untar(files / "images.tar", shared / "images")
        _untar(files / "meta.tar", ROOT / "meta")
        (shared / "data").mkdir(parents=True, exist_ok=True)
        if not (shared / "data" / "speciesnet").exists():
            shutil.copytree(ROOT / "meta" / "data_speciesnet", shared / "data" / "speciesnet")
        _start_build()
    elif (ROOT / "meta").exists() and not (ROOT / "build.done").exists() and not _build_alive():
        # A build that failed (or died) restarts with this call's checkout: code fixed between
        # two calls is picked up without re-sending any part.
        _log("previous build is not running: restarting it with this checkout")
        _start_build()
    if "ort_cuda.so.xz" in new:
        ort_dir = ROOT / "ortgpu"
        _untar(files / "ort_rest.tar.xz", ort_dir)
        with lzma.open(files / "ort_cuda.so.xz") as f, open(
                ort_dir / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so", "wb") as o:
            shutil.copyfileobj(f, o, 1 << 22)
        _log("onnxruntime-gpu unpacked")
    if (ROOT / "build.log").exists():
        print((ROOT / "build.log").read_text()[-1500:], flush=True)


def _build_alive() -> bool:
    try:
        os.kill(int((ROOT / "build.pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return not (ROOT / "build.failed").exists()


def _start_build() -> None:
    site, repo = ROOT / "site", ROOT / "repo"  # a private copy: later calls re-sync the checkout
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".gpu*", ".git", "out", ".venv*",
                                                               "__pycache__"))
    (ROOT / "build.failed").unlink(missing_ok=True)
    log = open(ROOT / "build.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, str(repo / "benchmarks" / "gpu_device.py"),
                             "build"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=repo,
                            env={**os.environ, "PYTHONPATH": f"{site}:{repo}{EXTRA}",
                                 "PYTHONUNBUFFERED": "1"})
    (ROOT / "build.pid").write_text(str(proc.pid))
    _log("build started in the background (/tmp/gpu/build.log)")


def _untar(path: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as tar:
        tar.extractall(dst, filter="data")
    return dst


def build() -> None:
    """Runs in the background on the device: synthetic detector, classifier, pack."""
    try:
        _build()
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        (ROOT / "build.failed").write_text(repr(exc))
        _log("build FAILED")
        raise


def _build() -> None:
    import torch

    from converters.synth_detector import build_synthetic_megadetector

    t0 = time.time()
    work = ROOT / "work"
    src = work / f"synth_{SIZE}"
    src.mkdir(parents=True, exist_ok=True)
    meta = ROOT / "meta"
    labels = next(meta.glob("*.labels.txt"))
    for p in [labels, meta / "taxonomy_release.txt", *meta.glob("geofence*.json")]:
        shutil.copyfile(p, src / p.name)
    images = sorted(p for p in (ROOT / "shared" / "images" / "speciesnet_test_data").iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    _log(f"building the {SIZE} detector on {torch.get_num_threads()} threads, "
         f"{len(images)} images")
    det_pt = src / f"md_v5a_synth_{SIZE}.pt"
    if not det_pt.is_file():  # a restarted build keeps the detector it already made
        tmp = det_pt.with_suffix(".tmp.pt")
        det = build_synthetic_megadetector(tmp, SIZE, images, seed=0)
        os.replace(tmp, det_pt)
        _log(f"detector done ({time.time() - t0:.0f} s): boxes at 0.1 per image "
             f"{det.get('boxes_per_image_at_0.1')}")
    clf = ROOT / "files" / "classifier.fp16.pt"
    while not (ROOT / "files" / "classifier.fp16.pt.ok").exists():
        time.sleep(2)
    model = torch.load(clf, weights_only=False, map_location="cpu").float()
    torch.save(model, src / f"always_crop_synth_{SIZE}.pt")
    info = {"version": f"4.0.2a-synthetic-{SIZE}", "type": "always_crop",
            "classifier": f"always_crop_synth_{SIZE}.pt", "classifier_labels": labels.name,
            "detector": f"md_v5a_synth_{SIZE}.pt", "taxonomy": "taxonomy_release.txt",
            "geofence": next(meta.glob("geofence*.json")).name,
            "edgenet_synthetic": {"size": SIZE, "seed": 0, "note": "built on the GPU machine "
                                  "by benchmarks/gpu_device.py (classifier from the local "
                                  "build, fp16-rounded)"}}
    (src / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    _log(f"source folder ready ({time.time() - t0:.0f} s); converting")
    r = subprocess.run([sys.executable, "-m", "edgenet.cli", "convert", "pack", str(src),
                        str(work / f"pack_{SIZE}"), "--variants", "fp16", "--max-images", "3",
                        "--force"], text=True, capture_output=True)
    print(r.stdout[-3000:], r.stderr[-3000:], flush=True)
    if r.returncode != 0:
        raise RuntimeError(f"convert pack exited {r.returncode}")
    (ROOT / "build.done").touch()
    _log(f"build done ({time.time() - t0:.0f} s)")


def _sh(cmd: list[str], env: dict, timeout: float) -> int:
    _log("$ " + " ".join(cmd))
    try:
        return subprocess.run(cmd, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        _log("timed out")
        return 124
    except OSError as exc:  # e.g. no nvidia-smi: report and go on with the other steps
        _log(f"cannot run: {exc}")
        return 127


def _collect(src: Path, names: tuple[str, ...], out: Path, stem: str) -> None:
    """Copy SRC/NAME to OUT, NAME's stem replaced by STEM, for each NAME that exists."""
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / (stem + Path(name).suffix))


def _wait_for_build(out: Path, t_end: float, margin_s: float) -> None:
    while not (ROOT / "build.done").exists():
        if (ROOT / "build.failed").exists() or time.monotonic() > t_end - margin_s:
            print((ROOT / "build.log").read_text()[-6000:])
            raise SystemExit("build did not finish")
        time.sleep(3)
    _log("build log tail:\n" + (ROOT / "build.log").read_text()[-1200:])
    shutil.copyfile(ROOT / "build.log", out / "build.log")


def _device_env(repo: Path) -> dict[str, str]:
    """The environment both tools run in there: onnxruntime-gpu first, the carried wheels,
    the checkout REPO, the image's CUDA libraries from its nvidia-* wheels."""
    ortgpu = "" if DRY else f"{ROOT / 'ortgpu'}:"
    return {**os.environ, "PYTHONUNBUFFERED": "1", "EDGENET_HOME": str(ROOT / "home"),
            "PYTHONPATH": f"{ortgpu}{ROOT / 'site'}:{repo}{EXTRA}",
            "LD_LIBRARY_PATH": ":".join([*_nvidia_lib_dirs(),
                                         os.environ.get("LD_LIBRARY_PATH", "")])}


def _big_set(small: Path) -> Path:
    """The throughput set: every image of SMALL hard-linked COPIES times."""
    big = ROOT / "big"
    if not big.exists():
        big.mkdir()
        for p in sorted(small.iterdir()):
            if p.name != "instances.json" and p.is_file():
                for c in range(COPIES):
                    os.link(p, big / f"c{c:02d}_{p.name}")
    return big


def bench(out: Path, budget_s: float) -> None:
    t_end = time.monotonic() + budget_s
    _wait_for_build(out, t_end, 200)
    repo = ROOT / "repo"
    env = _device_env(repo)
    _sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], env, 30)
    probe = ("import onnxruntime as ort, torch; print('ort', ort.__version__, "
             "ort.get_available_providers(), 'torch', torch.__version__, "
             "torch.cuda.is_available())")
    _sh([sys.executable, "-c", probe], env, 120)
    cuda_so = ROOT / "ortgpu" / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so"
    _sh(["bash", "-c", f"ldd {cuda_so} | grep -i 'not found' || echo 'ldd: all found'"], env, 30)
    work, pack = ROOT / "work", ROOT / "work" / f"pack_{SIZE}"
    src = work / f"synth_{SIZE}"
    common = [sys.executable, str(repo / "benchmarks" / "compare_reference.py"), "--size",
              SIZE, "--source", str(src), "--pack", str(pack), "--reference-python",
              sys.executable, "--no-env-size", "--precisions", PRECISIONS,
              "--batch-size", "8", f"--edgenet-args=--device {DEVICE}",  # workers: default
              "--cold-runs", COLD_RUNS]
    small = ROOT / "shared" / "images" / "speciesnet_test_data"
    big = _big_set(small)
    # 1. Speed: the 14 images x COPIES with one-image cold runs, so the table also gives
    # images/s after start-up. Each tool at its defaults: TF32 convolutions on both sides.
    # It gets at least 240 s (it took ~160 s on the H200 with one cold run per tool; a budget
    # eaten by the build wait gave it 90 s once, and it timed out); the later steps check the
    # time left and are skipped when it has run out.
    if "speed" in BENCH_STEPS:
        _sh([*common, "--work", str(work / "cmpbig"), "--images", str(big)], env,
            max(240, t_end - time.monotonic() - 150))
    # $OUT brings back 8 files at most: the tables' JSON (render_table rebuilds the Markdown),
    # bench's three outputs, build.log and the caller's log.
    _collect(work / "cmpbig", ("compare.json",), out, "compare_big")
    # 2. Fidelity: the 14 images with TF32 off in cuBLAS and cuDNN for BOTH tools
    # (NVIDIA_TF32_OVERRIDE=0), so each computes in fp32 as on the CPU; entry 7 found 11/14
    # images differing with TF32 on.
    if "fidelity14" in BENCH_STEPS and t_end - time.monotonic() > 70:
        _sh([*common, "--work", str(work / "cmp14"), "--images", str(small), "--no-cold",
             "--no-prime"],  # agreement only: no timing to protect
            {**env, "NVIDIA_TF32_OVERRIDE": "0"}, max(60, t_end - time.monotonic() - 40))
        _collect(work / "cmp14", ("compare.json",), out, "compare14_notf32")
    # 3. Per-stage times on the big set (each cell a fresh process).
    if "stages" in BENCH_STEPS and t_end - time.monotonic() > 45:
        _sh([sys.executable, "-m", "edgenet.cli", "bench", "--model", str(pack), "--images",
             str(big), "--devices", DEVICE, "--precisions", PRECISIONS, "--batch-sizes", "8",
             "--out", str(work / "bench"), "--no-peak", "--quiet"], env,
            max(30, t_end - time.monotonic() - 10))
        _collect(work / "bench", ("bench.md", "bench.json", "bench.png"), out, "bench")
    for table in (work / "cmpbig" / "compare.md", work / "cmp14" / "compare.md",
                  work / "bench" / "bench.md"):
        if table.is_file():
            print(f"\n== {table.parent.name}/{table.name}\n" + table.read_text(), flush=True)


def probe(out: Path, budget_s: float) -> None:
    """After (or instead of) `bench`: the device floor of each model under CUDA option
    variants (`benchmarks/gpu_probe.py`), then whole `edgenet run`s of the big set with the
    option sets the probe is about (`EDGENET_CUDA_OPTIONS`), each timed from process start."""
    t_end = time.monotonic() + budget_s
    _wait_for_build(out, t_end, 120)
    env = _device_env(REPO)  # this call's checkout: fixes sent after the build count
    pack = ROOT / "work" / f"pack_{SIZE}"
    from compare_reference import compare_predictions, make_instances, run_measured
    from stack_summary import render, summarize

    from edgenet.bench.report import stage_threads_note

    big = _big_set(ROOT / "shared" / "images" / "speciesnet_test_data")
    instances = make_instances(big, ROOT / "work" / "probe_instances.json")
    n_images = len(json.loads(instances.read_text())["instances"])
    # 1. What the pipeline's threads do (fp32, defaults): every thread's wall time, then who
    # holds the GIL (py-spy, carried as a wheel; benchmarks/stack_summary.py reads it).
    pyspy = ROOT / "site" / "bin" / "py-spy"
    for mode, flags in (("threads", ["--threads", "--idle"]), ("gil", ["--threads", "--gil"])):
        if ("pyspy" not in PROBE_STEPS or not pyspy.is_file()
                or t_end - time.monotonic() < 120):
            break
        preds = ROOT / "work" / f"pyspy_{mode}.json"
        preds.unlink(missing_ok=True)
        raw = out / f"pyspy_{mode}.txt"
        _sh([str(pyspy), "record", *flags, "-r", "100", "-f", "raw", "-o", str(raw), "--",
             sys.executable, "-m", "edgenet.cli", "run", "--model", str(pack),
             "--instances-json", str(instances), "--predictions-json", str(preds),
             "--precision", "fp32", "--device", DEVICE, "--quiet"], env, 90)
        if raw.is_file():
            print(f"== py-spy {mode}\n" + render(summarize(raw.read_text()), 8), flush=True)
    # 2. Each model alone under CUDA option variants.
    if "alone" in PROBE_STEPS:
        _sh([sys.executable, str(REPO / "benchmarks" / "gpu_probe.py"), str(pack), "--batches",
             "8", "--variants", ALONE_VARIANTS, "--uint8-detector", "--only", ALONE_ONLY,
             "--json", str(out / "probe.json")],
            env, max(30, (t_end - time.monotonic()) * 0.5))
    # 3. Whole runs with the option sets the probe is about, most wanted first; each one's
    # predictions are compared with the default run's of the same precision.
    crops32 = ["--classifier-batch-size", "32"]  # entry 12: 32 crops per classifier batch
    runs: list[tuple[str, dict[str, str], str, list[str]]] = [
        ("default", {}, "fp32", []),
        # entry 25: the classifier's runs replayed as a CUDA graph (one launch instead of
        # several hundred kernels per 8-crop batch; edgenet/cuda_graph.py)
        ("cuda_graph", {"EDGENET_CUDA_GRAPH": "1"}, "fp32", []),
        # entry 20: the detector's calls take ~3x their time alone inside the pipeline; with
        # no classifier on the GPU beside it, do they still? (wall only; no classifications)
        ("detector_only", {}, "fp32", ["--detector-only"]),
        # ... and if the two sessions take turns on the device, or copy off the default stream?
        ("gpu_serial", {"EDGENET_GPU_SERIAL": "1"}, "fp32", []),
        ("copy_streams", {"EDGENET_CUDA_OPTIONS": "do_copy_in_default_stream=0"}, "fp32", []),
        ("overlap_off", {"EDGENET_OVERLAP": "0"}, "fp32", []),
        # the detector's batch (8 on a GPU by default): fewer, larger device calls? (entry
        # 23: 10-18% faster on the H100, +700 MB peak RSS; the classifier then runs 16 crops)
        ("batch_16", {}, "fp32", ["--batch-size", "16"]),
        # entry 23: the classifier's thread sets the rate, ~20 ms of each 8-crop batch on the
        # CPU (stack, uint8 -> float, the copy): crops converted on the device instead
        ("clf_pixels", {"EDGENET_DEVICE_PIXELS": "classifier"}, "fp32", []),
        ("batch_16_crops_8", {}, "fp32", ["--batch-size", "16", "--classifier-batch-size", "8"]),
        ("batch_16_clf_pixels", {"EDGENET_DEVICE_PIXELS": "classifier"}, "fp32",
         ["--batch-size", "16"]),
        ("both_pixels", {"EDGENET_DEVICE_PIXELS": "both"}, "fp32", []),
        # entry 23: the classifier's first run (5 s of the 9 s cold start) during the
        # detector's build and first run instead of after them
        ("warmup", {"EDGENET_GPU_WARMUP": "1"}, "fp32", []),
        # entry 24: sessions built from the mapped copies (the default) against the pack's
        # single files (the cache off): the row's model_load_s and first_image_s
        ("no_mapped_copy", {"EDGENET_ORT_CACHE": "0"}, "fp32", []),
        # entry 24: the classifier's 5 s first run looks like cuDNN's per-node algorithm
        # query (~250 convolutions x ~20 ms); no query at all (a fixed algorithm) instead
        ("no_search", {"EDGENET_CUDA_OPTIONS": "cudnn_conv_algo_search=DEFAULT"}, "fp32", []),
        # entry 27: 9.2 GB of GPU memory at the defaults (the reference: 2.4 GB), more than a
        # Jetson or a laptop GPU has; how much is onnxruntime's arena rounding its growth up
        # to powers of two, and how much cuDNN's workspaces?
        ("arena_same", {"EDGENET_CUDA_OPTIONS": "arena_extend_strategy=kSameAsRequested"},
         "fp32", []),
        ("small_workspace", {"EDGENET_CUDA_OPTIONS": "cudnn_conv_use_max_workspace=0"},
         "fp32", []),
        # entry 16: the heap trimmed after the sessions are built (on by default); off here
        ("no_heap_trim", {"EDGENET_TRIM": "0"}, "fp32", []),
        ("crop_batch_32", {}, "fp32", crops32),
        # entries 10 and 11 off: results by pipe, each image decoded twice
        ("pipe_transfer", {"EDGENET_DECODE_TRANSFER": "pipe"}, "fp32", []),
        ("device_pixels", {"EDGENET_DEVICE_PIXELS": "1"}, "fp32", []),
        ("prefer_nhwc", {"EDGENET_CUDA_OPTIONS": "prefer_nhwc=1"}, "fp32", []),
        # entry 20: with TF32 off edgenet's GPU output matched its CPU output on 14 of 14
        # images; what does exact fp32 cost on the whole set? (onnxruntime's own option)
        ("tf32_off", {"EDGENET_CUDA_OPTIONS": "use_tf32=0"}, "fp32", []),
        # entry 15: glibc keeps freed buffers of up to 32 MB in its heaps; a fixed 1 MB mmap
        # threshold gives them back (CPU proxy: main process -20% RSS, +20% time on 2 cores)
        ("malloc_mmap_1M", {"MALLOC_MMAP_THRESHOLD_": "1048576"}, "fp32", []),
        ("default", {}, "fp16", []), ("crop_batch_32", {}, "fp16", crops32),
        ("cuda_graph", {"EDGENET_CUDA_GRAPH": "1"}, "fp16", []),
        ("device_pixels", {"EDGENET_DEVICE_PIXELS": "1"}, "fp16", []),
        # fp16 was slower than fp32 in the pipeline (entries 9, 20): its float16 casts run on
        # the CPU, on the threads that set the rate (entry 23); on the device instead?
        ("both_pixels", {"EDGENET_DEVICE_PIXELS": "both"}, "fp16", []),
        ("prefer_nhwc", {"EDGENET_CUDA_OPTIONS": "prefer_nhwc=1"}, "fp16", [])]
    if PROBE_RUNS:
        by_key = {f"{label}:{prec}": (label, e, prec, a) for label, e, prec, a in runs}
        unknown = [r for r in PROBE_RUNS if r not in by_key]
        if unknown:
            raise SystemExit(f"unknown EDGENET_GPU_PROBE_RUNS {unknown}; known: {list(by_key)}")
        runs = [by_key[r] for r in PROBE_RUNS]
    if "runs" not in PROBE_STEPS:
        runs = []
    rows = []
    for label, extra_env, prec, extra_args in runs:
        if t_end - time.monotonic() < 45:
            break
        preds = ROOT / "work" / f"probe_{label}_{prec}.json"
        preds.unlink(missing_ok=True)  # a run resumes from an existing file
        cmd = [sys.executable, "-m", "edgenet.cli", "run", "--model", str(pack),
               "--instances-json", str(instances), "--predictions-json", str(preds),
               "--precision", prec, "--device", DEVICE, "--quiet", *extra_args]
        _log("$ " + " ".join(cmd))
        # Measured as the README's table measures (entry 14: peak RSS of the process tree);
        # the run's own stats give each stage thread's waits (which one sets the rate).
        stats_json = ROOT / "work" / f"probe_{label}_{prec}.stats.json"
        stats_json.unlink(missing_ok=True)
        got = run_measured(cmd, {**env, **extra_env, "EDGENET_STATS_JSON": str(stats_json)},
                           t_end - time.monotonic() - 10)
        row = {"run": label, "env": extra_env, "args": extra_args, "precision": prec,
               "rc": got["returncode"], "wall_s": round(got["wall_s"], 2), "images": n_images,
               "peak_rss_tree_mb": got["peak_rss_tree_mb"],
               "peak_rss_largest_mb": got["peak_rss_wait4_mb"], "peak_gpu_mb": got["peak_gpu_mb"]}
        if stats_json.is_file():
            stats = json.loads(stats_json.read_text())
            row["stage_threads"] = stats.get("stage_threads")
            row["timings"] = stats.get("timings")
            # the cold start's parts: sessions built, then the first image done (from the
            # pipeline's start, after the load; the warm-up switch is about this one)
            row["model_load_s"] = stats.get("model_load_s")
            row["first_image_s"] = stats.get("first_image_s")
            note = stage_threads_note({"ok": True, "stage_threads": row["stage_threads"]},
                                      f"{label} {prec}")
            if note:
                _log(note)
        if got["returncode"] != 0:
            _log(got["output_tail"])
        base = ROOT / "work" / f"probe_default_{prec}.json"
        if (label != "default" and "--detector-only" not in extra_args and preds.is_file()
                and base.is_file()):
            cmp = compare_predictions(json.loads(base.read_text()), json.loads(preds.read_text()))
            row["images_differing_from_default"] = cmp["mismatched_images"]
        rows.append(row)
        _log(f"edgenet run: {row}")
    (out / "probe_runs.json").write_text(json.dumps(rows, indent=1))


def fidelity(out: Path, budget_s: float) -> None:
    """After `bench`: which side moves on the GPU. Both tools run the 14 images on the CPU and
    each tool's GPU output from `bench`'s TF32-off comparison is compared with its own CPU
    output (and the two CPU outputs with each other), with the same rules as the README's."""
    t_end = time.monotonic() + budget_s
    _wait_for_build(out, t_end, 60)
    env = _device_env(ROOT / "repo")
    from compare_reference import compare_predictions

    work, cmp14 = ROOT / "work", ROOT / "work" / "cmp14"
    instances = cmp14 / "instances.json"
    if not (cmp14 / "reference.json").is_file() or not (cmp14 / "edgenet_fp32.json").is_file():
        raise SystemExit("no TF32-off GPU outputs: run `bench` first")
    ref_cpu, ours_cpu = work / "fid_reference_cpu.json", work / "fid_edgenet_cpu.json"
    for path in (ref_cpu, ours_cpu):
        path.unlink(missing_ok=True)  # both tools resume from an existing file
    _sh([sys.executable, "-m", "edgenet.cli", "run", "--model", str(work / f"pack_{SIZE}"),
         "--instances-json", str(instances), "--predictions-json", str(ours_cpu),
         "--precision", "fp32", "--device", "cpu", "--quiet"], env,
        max(30, (t_end - time.monotonic()) * 0.4))
    _sh([sys.executable, "-m", "speciesnet.scripts.run_model", "--model",
         str(work / f"synth_{SIZE}"), "--instances_json", str(instances), "--predictions_json",
         str(ref_cpu), "--bypass_prompts"], {**env, "CUDA_VISIBLE_DEVICES": ""},
        max(30, t_end - time.monotonic() - 10))
    pairs = {"speciesnet GPU (TF32 off) vs speciesnet CPU": (cmp14 / "reference.json", ref_cpu),
             "edgenet GPU (TF32 off) vs edgenet CPU": (cmp14 / "edgenet_fp32.json", ours_cpu),
             "speciesnet CPU vs edgenet CPU": (ref_cpu, ours_cpu)}
    report = {}
    for label, (a, b) in pairs.items():
        if not (a.is_file() and b.is_file()):
            report[label] = {"error": "missing output"}
            continue
        cmp = compare_predictions(json.loads(a.read_text()), json.loads(b.read_text()))
        report[label] = {"mismatched_images": cmp["mismatched_images"], "images": cmp["images"],
                         "problems": cmp["problems"][:40]}
        _log(f"{label}: {cmp['mismatched_images']}/{cmp['images']} images differ")
    (out / "fidelity_gpu_cpu.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("payload")
    pp.add_argument("--ort-wheel", type=Path, required=True)
    pp.add_argument("--synth", type=Path, default=SYNTH, help="local synthetic folder")
    pr = sub.add_parser("receive")
    pr.add_argument("k", type=int)
    sub.add_parser("build")
    pb = sub.add_parser("bench")
    pb.add_argument("--budget-s", type=float, default=540)
    pq = sub.add_parser("probe")
    pq.add_argument("--budget-s", type=float, default=300)
    pf = sub.add_parser("fidelity")
    pf.add_argument("--budget-s", type=float, default=150)
    a = p.parse_args()
    unknown_bench = BENCH_STEPS - {"speed", "fidelity14", "stages"}
    if unknown_bench:
        p.error(f"EDGENET_GPU_BENCH_STEPS: unknown {sorted(unknown_bench)}; "
                "known: speed, fidelity14, stages")
    unknown_steps = PROBE_STEPS - {"pyspy", "alone", "runs"}
    if unknown_steps:
        p.error(f"EDGENET_GPU_PROBE_STEPS: unknown {sorted(unknown_steps)}; "
                "known: pyspy, alone, runs")
    # The device's python3 has no edgenet installed: the checkout is what it imports (probe's
    # run_measured imports edgenet.bench; a rehearsal in the dev venv, where edgenet is
    # installed, did not show that, and 2026-11-27's H200 call lost its probe to it).
    sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]
    if a.cmd == "payload":
        payload(a.ort_wheel, a.synth)
    elif a.cmd == "receive":
        receive(a.k)
    elif a.cmd == "build":
        build()
    else:
        out = Path(os.environ.get("OUT", ROOT / "out"))
        out.mkdir(parents=True, exist_ok=True)
        {"bench": bench, "probe": probe, "fidelity": fidelity}[a.cmd](out, a.budget_s)


if __name__ == "__main__":
    main()
