"""Issue 5 item 1: SIGKILL at random moments, resume, same answer; Ctrl-C saves and says so.

The logic is `edgenet.testing.kill_resume` (also `scripts/kill_resume.py`). The default test
is a short version (30 images, 5 kills); the full proof (300 images, 20 kills) is
`pytest -m slow tests/test_kill_resume.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals/process groups")

pytest.importorskip("onnx")  # the tiny pack is built with onnx.helper (dev dependency)

from tinypack import build_tiny_pack  # noqa: E402

from edgenet.testing import kill_resume  # noqa: E402
from edgenet.testing.bad_inputs import make_image_set  # noqa: E402


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return build_tiny_pack(tmp_path_factory.mktemp("kill_pack") / "pack")


def _check(report: kill_resume.Report, *, kills: int, images: int) -> None:
    assert not report.problems, "\n".join(report.problems)
    assert report.kills >= kills
    assert report.images == images + 2  # plus the zero-byte and the text ".jpg"
    assert report.unique_predictions == report.images
    assert report.equal
    assert report.bad_reads == 0 and report.reads > 0
    assert report.summary() == (
        f"{report.images} images, {report.images} unique predictions, "
        "equal to the uninterrupted run"
    )


def test_kill_resume_short(pack, tmp_path) -> None:
    """30 images, 5 SIGKILLs, Ctrl-C check; also no orphaned decode workers after a kill."""
    report = kill_resume.run_kill_resume(images=30, kills=5, model=pack, workdir=tmp_path,
                                         seed=1234, log=lambda *_: None)
    _check(report, kills=5, images=30)
    assert report.orphan_workers == 0
    assert report.sigint.get("exit_code") not in (None, 0)
    assert report.sigint.get("resumed_equal") is True


def test_sigkill_leaves_no_orphan_workers(pack, tmp_path) -> None:
    """`kill -9 PID` of edgenet must not leave its decode workers running forever.

    The workers are spawned children; with their parent gone they must notice and exit
    (e.g. by watching `multiprocessing.parent_process().sentinel`).
    """
    folder = tmp_path / "images"
    make_image_set(folder, 30, seed=3)
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "edgenet", "run", "--model", str(pack), "--folders",
           str(folder), "--predictions-json", str(out), "--workers", "1",
           "--checkpoint-every-images", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone = kill_resume._wait_group_gone(proc.pid, kill_resume.ORPHAN_WAIT_S)
        assert gone, "decode workers outlived their SIGKILLed parent"
        json.loads(out.read_text(encoding="utf-8"))  # and the checkpoint is complete JSON
        # Its decode-result folder in /dev/shm (if it used one) is left behind, and removed by
        # the next run that makes one (`result_transfer.prune_stale`).
        from edgenet import result_transfer

        root = result_transfer.transfer_root()
        if root is not None:
            mine = [p for p in Path(root).iterdir()
                    if p.name.startswith(f"{result_transfer.PREFIX}{proc.pid}-")]
            old = time.time() - result_transfer.STALE_AFTER_S - 60
            for folder in mine:  # as if the next run came 10 minutes later
                os.utime(folder, (old, old))
            result_transfer.prune_stale(root)
            assert not [p for p in mine if p.exists()]
    finally:
        kill_resume._kill_group(proc.pid)


def test_script_entry_point(pack, tmp_path, capsys) -> None:
    """`scripts/kill_resume.py` prints the summary line and exits 0 (short run, no Ctrl-C)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "kill_resume.py"
    assert script.is_file()
    code = kill_resume.main(["--images", "12", "--kills", "2", "--model", str(pack),
                             "--workdir", str(tmp_path), "--seed", "7", "--no-sigint-check",
                             "--", "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().endswith("14 images, 14 unique predictions, equal to the uninterrupted run")


@pytest.mark.slow
def test_kill_resume_full(pack, tmp_path) -> None:
    """The issue's proof: a few hundred images, at least 20 random SIGKILLs."""
    report = kill_resume.run_kill_resume(images=300, kills=20, model=pack, workdir=tmp_path,
                                         seed=20261126)
    _check(report, kills=20, images=300)


def test_sigterm_saves_and_exits_nonzero(pack, tmp_path) -> None:
    """SIGTERM to the main process only (a service manager, `kill PID`): same as Ctrl-C."""
    folder = tmp_path / "images"
    make_image_set(folder, 30, seed=4)
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "edgenet", "run", "--model", str(pack), "--folders",
           str(folder), "--predictions-json", str(out), "--checkpoint-every-images", "1",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    try:
        deadline = time.monotonic() + 120
        while (kill_resume._done_count(out) < 3 and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.02)
        assert proc.poll() is None, "finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode not in (0, None), stderr
        assert "Traceback" not in stderr
        assert "interrupted" in stderr and "saved" in stderr, stderr
        data = json.loads(out.read_text(encoding="utf-8"))
        assert len(data["predictions"]) == 30
        assert kill_resume._done_count(out) >= 3
        assert kill_resume._wait_group_gone(proc.pid, kill_resume.ORPHAN_WAIT_S)
    finally:
        kill_resume._kill_group(proc.pid)
