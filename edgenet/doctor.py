"""`edgenet doctor`: what this installation can do, checked for real, and never crashing.

It prints versions, the execution providers onnxruntime offers, and for each of them the
result of building a tiny session (a 64x64 MatMul written with a ten-line protobuf encoder,
since `onnx` is not a runtime dependency) and running it: the provider that actually ran,
whether the numbers are right, and how long it took. A provider that is compiled in but
cannot load (e.g. CUDA libraries missing) shows up here as a failed check with the reason.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgenet.onnx_writer import FLOAT, model, node, value_info


def tiny_model_bytes(n: int = 64) -> bytes:
    """An ONNX model (opset 13) computing C = A @ B for float32 (n, n) inputs."""
    return model([node("MatMul", ["A", "B"], ["C"])], "doctor",
                 [value_info("A", FLOAT, (n, n)), value_info("B", FLOAT, (n, n))],
                 [value_info("C", FLOAT, (n, n))])


def _version(module: str, attr: str = "__version__") -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - report, never crash
        return f"not available ({type(err).__name__})"
    return str(getattr(mod, attr, "?"))


def check_device(device: str, model_path: Path) -> dict:
    """Build and run the tiny session on one device; a dict describing what happened."""
    import numpy as np

    result: dict = {"device": device, "ok": False}
    try:
        from edgenet.providers import make_session

        start = time.perf_counter()
        sess = make_session(model_path, device=device, cache=False)  # a throwaway model
        result["session_s"] = time.perf_counter() - start
        result["providers"] = list(sess.get_providers())
        rng = np.random.default_rng(0)
        a = rng.standard_normal((64, 64), dtype=np.float32)
        b = rng.standard_normal((64, 64), dtype=np.float32)
        start = time.perf_counter()
        (c,) = sess.run(None, {"A": a, "B": b})
        result["run_s"] = time.perf_counter() - start
        err = float(np.max(np.abs(np.asarray(c, dtype=np.float64) - a.astype(np.float64) @ b)))
        result["max_abs_error"] = err
        result["ok"] = err < 1e-2
        if not result["ok"]:
            result["error"] = f"wrong result (max abs error {err:.3g})"
    except Exception as err:  # noqa: BLE001 - report, never crash
        first_line = (str(err).strip().splitlines() or [""])[0]
        result["error"] = f"{type(err).__name__}: {first_line}"
    return result


def _session_cache_line() -> str:
    """Where the optimised CPU graphs and mapped weights live, and how much they hold."""
    from edgenet import graph_cache

    folder = graph_cache.cache_folder()
    if not graph_cache.cache_on():
        return f"{folder} (off: EDGENET_ORT_CACHE=0)"
    if not folder.is_dir():
        return f"{folder} (empty: written by the first run or `edgenet convert pack`)"
    models = sum(1 for _ in folder.glob(f"*/{graph_cache.SOURCE_NAME}"))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return (f"{folder} ({models} model(s), {size / 1e6:.0f} MB: optimised CPU graphs and "
            "mapped weights; safe to delete, rebuilt at the next run)")


def _transfer_line() -> str:
    """How decode workers will hand back arrays here (edgenet/result_transfer.py)."""
    import os

    from edgenet import result_transfer

    root = result_transfer.transfer_root()
    if root is None:
        why = ("EDGENET_DECODE_TRANSFER=pipe"
               if os.environ.get("EDGENET_DECODE_TRANSFER") == "pipe"
               else f"no writable {result_transfer.SHM}")
        return f"through the pipe ({why}); images with crops are decoded twice"
    free = result_transfer.free_bytes(root)  # the measure the transfer itself uses
    frames = ("decoded frames kept for crops" if free > result_transfer.FRAME_HEADROOM
              else f"too little free there ({free / 2**20:.0f} MB) to keep decoded frames")
    return f"files in {root} ({free / 2**30:.1f} GB free; {frames})"


def _bf16_line() -> str:
    """Whether `--precision bf16` can run here, and if not, edgenet's own reason."""
    from edgenet.errors import EdgenetError
    from edgenet.run_defaults import cpu_flags

    try:
        from edgenet.providers import BF16_CPU_FLAGS, resolve_providers

        resolve_providers("auto", precision="bf16")
    except EdgenetError as err:
        return "no: " + str(err).splitlines()[0].removeprefix("--precision bf16 ")
    except Exception as err:  # noqa: BLE001 - the report never crashes
        return f"unknown ({type(err).__name__}: {err})"
    flags = cpu_flags()
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    return "yes (OpenVINO" + (f", {', '.join(found)})" if found else "; CPU flags unknown)")


def run_doctor(echo: Callable[[str], None] = print) -> int:
    """Print the report; returns 0 (the report itself says what is wrong)."""
    import edgenet

    echo(f"edgenet {edgenet.__version__}")
    echo(f"python {sys.version.split()[0]} ({platform.platform()}, {platform.machine()})")
    echo(f"cpus {os.cpu_count()}")
    for module, label in (
        ("onnxruntime", "onnxruntime"),
        ("numpy", "numpy"),
        ("PIL", "pillow"),
        ("cv2", "opencv"),
        ("typer", "typer"),
    ):
        echo(f"{label} {_version(module)}")
    try:
        import onnxruntime as ort

        echo(f"onnxruntime device: {ort.get_device()}")
        echo("onnxruntime providers: " + ", ".join(ort.get_available_providers()))
    except Exception as err:  # noqa: BLE001
        echo(f"onnxruntime: cannot import ({type(err).__name__}: {err})")
        echo("fix: pip install onnxruntime (or onnxruntime-gpu, see README)")
        return 0
    try:
        from edgenet.providers import available_devices

        devices = available_devices()
    except Exception as err:  # noqa: BLE001
        echo(f"edgenet providers: cannot list ({type(err).__name__}: {err})")
        devices = {"cpu": True}
    echo("devices: " + ", ".join(f"{d}={'yes' if ok else 'no'}" for d, ok in devices.items()))
    echo("--precision bf16: " + _bf16_line())
    with tempfile.TemporaryDirectory(prefix="edgenet-doctor-") as tmp:
        model_path = Path(tmp) / "matmul.onnx"
        model_path.write_bytes(tiny_model_bytes())
        for device, ok in devices.items():
            if not ok:
                continue
            res = check_device(device, model_path)
            if res["ok"]:
                echo(
                    f"check {device}: ok (ran on {', '.join(res['providers'])}; session "
                    f"{res['session_s'] * 1000:.0f} ms, run {res['run_s'] * 1000:.1f} ms)"
                )
            else:
                echo(f"check {device}: FAILED ({res.get('error', 'unknown error')})")
    echo("decode workers' results: " + _transfer_line())
    try:
        echo("session cache: " + _session_cache_line())
    except OSError as err:
        echo(f"session cache: unreadable ({err})")
    try:
        from edgenet.pack import default_pack_dir

        pack_dir = Path(default_pack_dir())
        state = "present" if (pack_dir / "info.json").exists() else "absent"
        echo(f"default model pack: {pack_dir} ({state})")
    except Exception as err:  # noqa: BLE001
        echo(f"default model pack: unknown ({type(err).__name__}: {err})")
    return 0
