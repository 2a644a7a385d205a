"""Issue 5 item 3: a folder of every bad image input runs to completion with the right answers.

Each test drives the real command line (`python -m edgenet run`) in a subprocess, as a user
would, with a timeout (a hang fails the test) and checks that stderr holds no Python
traceback. Outcomes: "failure" means the image could not be loaded (a "DETECTOR" failure in
the full pipeline); "prediction" means it was decoded and went through the detector (it has
"detections"; a degenerate crop may still add a "CLASSIFIER" failure, as in the reference).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("onnx")  # the tiny pack is built with onnx.helper (dev dependency)

from tinypack import build_tiny_pack  # noqa: E402

from edgenet.testing.bad_inputs import (  # noqa: E402
    FAILURE,
    PREDICTION,
    make_bad_inputs,
    png_bytes,
    restore_permissions,
    running_as_root,
)

TIMEOUT_S = 180


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad_inputs")
    pack = build_tiny_pack(root / "pack")
    expected = make_bad_inputs(root / "bad")
    yield {"root": root, "pack": pack, "expected": expected, "images": root / "bad" / "images"}
    restore_permissions(root / "bad")


def run_edgenet(*args: str, cwd: Path | None = None, timeout: float = TIMEOUT_S,
                prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    """`edgenet ARGS` in a fresh interpreter; a timeout (hang) fails the calling test."""
    cmd = [*(prefix or []), sys.executable, "-m", "edgenet", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"edgenet hung (> {timeout} s): {' '.join(cmd)}\n{err.stderr}")


def outcome(prediction: dict) -> str:
    failures = prediction.get("failures") or []
    if "DETECTOR" in failures:
        return FAILURE
    assert "detections" in prediction, prediction
    return PREDICTION


def check_predictions(path: Path, expected: dict[str, str]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    got = [p["filepath"] for p in data["predictions"]]
    assert len(got) == len(set(got)), "an image appears twice"
    assert sorted(got) == sorted(expected)
    wrong = {
        p["filepath"]: (outcome(p), expected[p["filepath"]], p.get("failures"))
        for p in data["predictions"]
        if outcome(p) != expected[p["filepath"]]
    }
    assert not wrong, wrong


def test_bad_inputs_are_what_they_claim(bad) -> None:
    """The maker really writes the odd files (otherwise the run tests prove nothing)."""
    from PIL import Image

    images: Path = bad["images"]
    modes = {"cmyk.jpg": "CMYK", "greyscale.jpg": "L", "grey16.png": "I;16",
             "palette.png": "P", "rgba.png": "RGBA", "rgb16.png": "RGB"}
    for name, mode in modes.items():
        with Image.open(images / name) as img:
            assert img.mode == mode, name
    assert (images / "rgb16.png").read_bytes()[24] == 16  # IHDR bit depth
    with Image.open(images / "exif_rotated.jpg") as img:
        assert img.getexif()[0x0112] == 6
    with Image.open(images / "png_named.jpg") as img:
        assert img.format == "PNG"
    bomb = images / "bomb_30000x30000.png"
    assert bomb.stat().st_size < 10_000
    header = bomb.read_bytes()[16:24]
    assert int.from_bytes(header[:4], "big") == 30000 == int.from_bytes(header[4:], "big")
    assert (images / "zero_bytes.jpg").stat().st_size == 0
    assert (images / "folder_named.jpg").is_dir()
    assert (images / "loop_subdir" / "up").resolve() == images.resolve()
    with pytest.raises(OSError):
        (images / "self_loop.jpg").stat()
    assert any(ord(c) > 127 for k in bad["expected"] for c in k)
    if sys.platform.startswith("linux"):  # a Latin-1 byte in a file name (not UTF-8)
        assert any("\udce9" in k for k in bad["expected"])
    assert not os.access(images / "unreadable.jpg", os.R_OK) or running_as_root()
    urls = [k for k in bad["expected"] if k.startswith("http://127.0.0.1:")]
    assert len(urls) == 1 and bad["expected"][urls[0]] == FAILURE
    instances = json.loads((bad["root"] / "bad" / "instances.json").read_text("utf-8"))
    assert [i["filepath"] for i in instances["instances"]] == list(bad["expected"])


def test_png_bytes_roundtrip() -> None:
    """The hand-written PNG writer makes files Pillow decodes to the intended pixels."""
    import io

    import numpy as np
    from PIL import Image

    rows = b"".join(b"\x00" + bytes([y * 10, 0, 255 - y]) * 3 for y in range(2))
    with Image.open(io.BytesIO(png_bytes(3, 2, rows=rows))) as img:
        arr = np.asarray(img.convert("RGB"))
    assert arr.shape == (2, 3, 3)
    assert arr[1, 2].tolist() == [10, 0, 254]


def test_bad_folder_runs_to_completion(bad, tmp_path) -> None:
    out = tmp_path / "out.json"
    proc = run_edgenet("run", "--model", str(bad["pack"]), "--folders", str(bad["images"]),
                       "--predictions-json", str(out), "--checkpoint-every-images", "3")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    on_disk = {k: v for k, v in bad["expected"].items()
               if not k.startswith("http") and os.path.lexists(k)}
    assert len(on_disk) == len(bad["expected"]) - 2  # minus the missing file and the URL
    check_predictions(out, on_disk)
    # A symlink loop to a parent folder must not be followed (every image found once).
    data = json.loads(out.read_text("utf-8"))
    assert not any("/loop_subdir/up/" in p["filepath"] for p in data["predictions"])


def test_bad_instances_json_runs_to_completion(bad, tmp_path) -> None:
    """Everything plus a missing file and a closed loopback URL, with a country (geofence)."""
    out = tmp_path / "out.json"
    start = time.monotonic()
    proc = run_edgenet("run", "--model", str(bad["pack"]),
                       "--instances-json", str(bad["root"] / "bad" / "instances.json"),
                       "--country", "KEN", "--predictions-json", str(out), "--quiet")
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_predictions(out, bad["expected"])
    # A refused connection is answered at once: the URL must not wait for a long timeout.
    assert elapsed < 90, elapsed


def _run_with_rusage(cmd: list[str], timeout: float) -> tuple[int, str, int]:
    """Run `cmd`; return (exit code, stderr, peak RSS in kB of that process) via wait4.

    Linux carries the parent's RSS high-water mark across fork+exec into the child's
    ru_maxrss, and this pytest process may hold gigabytes (torch, tensorflow from other tests).
    So `cmd` is started from a small freshly exec'd launcher whose wait4 sees only `cmd`.
    """
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as report:
        launcher = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, *cmd],
            stdout=report, stderr=err, stdin=subprocess.DEVNULL,
        )
        try:
            launcher.wait(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
        report.seek(0)
        code_text, _, rss_text = report.read().decode().strip().partition(" ")
        err.seek(0)
        return int(code_text), err.read().decode("utf-8", "replace"), int(rss_text)


_LAUNCHER = f"""
import os, subprocess, sys, threading
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
timer = threading.Timer({TIMEOUT_S!r}, proc.kill)
timer.start()
_, status, usage = os.wait4(proc.pid, 0)
timer.cancel()
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 (POSIX)")
def test_decompression_bomb_is_refused_without_decoding(bad, tmp_path) -> None:
    """A 30000x30000 PNG (2.7 GB of RGB) is refused from its header: peak memory stays low.

    `--workers 0` decodes in the measured process itself, so its peak RSS covers the decode.
    """
    out = tmp_path / "out.json"
    bomb = bad["images"] / "bomb_30000x30000.png"
    start = time.monotonic()
    code, stderr, peak_kb = _run_with_rusage(
        [sys.executable, "-m", "edgenet", "run", "--model", str(bad["pack"]), "--filepaths",
         str(bomb), "--workers", "0", "--predictions-json", str(out), "--quiet"],
        TIMEOUT_S,
    )
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert time.monotonic() - start < 60
    assert peak_kb < 1_000_000, f"peak RSS {peak_kb} kB: the bomb was decoded"
    check_predictions(out, {bomb.as_posix(): FAILURE})


def _unprivileged_prefix(workdir: Path) -> list[str] | None:
    """`setpriv` to uid/gid 65534 when root and it works for this interpreter, else None."""
    setpriv = shutil.which("setpriv")
    if not running_as_root() or setpriv is None:
        return None
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "import edgenet.cli"],
                               capture_output=True, timeout=60, cwd=workdir)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


def test_unreadable_file_is_a_failure(bad) -> None:
    """chmod 000 gives a failure entry. Root reads anything, so as root run edgenet as uid
    65534 (setpriv) on copies in a world-readable temp folder; decode in-process
    (`--workers 0`) since spawned workers re-exec the interpreter, whose path may not be
    reachable by that uid."""
    if not running_as_root():
        assert bad["expected"][(bad["images"] / "unreadable.jpg").as_posix()] == FAILURE
    workdir = Path(tempfile.mkdtemp(prefix="edgenet-unpriv-"))
    try:
        os.chmod(workdir, 0o755)
        pack = workdir / "pack"
        shutil.copytree(bad["pack"], pack)
        image = workdir / "unreadable.jpg"
        shutil.copy(bad["images"] / "normal.jpg", image)
        os.chmod(image, 0)
        outdir = workdir / "out"
        outdir.mkdir()
        os.chmod(outdir, 0o777)
        prefix = None
        if running_as_root():
            prefix = _unprivileged_prefix(workdir)
            if prefix is None:
                pytest.skip("running as root and cannot drop privileges (setpriv)")
        out = outdir / "out.json"
        proc = run_edgenet("run", "--model", str(pack), "--filepaths", image.as_posix(),
                           "--workers", "0", "--predictions-json", str(out), "--quiet",
                           cwd=outdir, prefix=prefix)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        check_predictions(out, {image.as_posix(): FAILURE})
    finally:
        restore_permissions(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.reference
def test_expected_outcomes_match_reference_loader(bad, ref_python) -> None:
    """Our expected outcomes are the reference's: speciesnet's `load_rgb_image` returns None
    exactly for the files we expect to fail (URL excluded: the reference has no fetch cap)."""
    local = [k for k in bad["expected"] if not k.startswith("http")]
    script = (
        "import json, sys\n"
        "from speciesnet.utils import load_rgb_image\n"
        "paths = json.load(sys.stdin)\n"
        "print(json.dumps({p: load_rgb_image(p) is not None for p in paths}))\n"
    )
    proc = subprocess.run([str(ref_python), "-c", script], input=json.dumps(local),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    want = {k: bad["expected"][k] == PREDICTION for k in local}
    assert loaded == want

