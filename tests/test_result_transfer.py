"""Decoded arrays from workers by file (edgenet.result_transfer): same arrays, files cleaned."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from edgenet import result_transfer
from edgenet.decode_workers import DecodeExecutor, DecodeJob, DecodeResult, run_decode_job


def _result(crops: int = 2) -> DecodeResult:
    rng = np.random.default_rng(0)
    return DecodeResult(
        filepath="x.jpg", ok=True, orig_w=1600, orig_h=1200,
        letterboxed=rng.integers(0, 256, (960, 1280, 3), dtype=np.uint8),
        crops=rng.integers(0, 256, (crops, 480, 480, 3), dtype=np.uint8))


@pytest.mark.parametrize("crops", [2, 0])
def test_spill_and_unspill_give_the_same_arrays(tmp_path: Path, crops: int) -> None:
    res = _result(crops)
    want_box, want_crops = res.letterboxed.copy(), res.crops.copy()
    result_transfer.spill(res, str(tmp_path))
    assert res.letterboxed is None and res.crops is None and res.spill is not None
    assert len(pickle.dumps(res)) < 2000  # what crosses the pipe now
    assert len(list(tmp_path.iterdir())) == 1
    back = result_transfer.unspill(pickle.loads(pickle.dumps(res)))
    assert back.ok and back.spill is None and not list(tmp_path.iterdir())
    assert back.letterboxed.dtype == np.uint8 and back.crops.shape == (crops, 480, 480, 3)
    np.testing.assert_array_equal(back.letterboxed, want_box)
    np.testing.assert_array_equal(back.crops, want_crops)


def test_a_result_that_cannot_be_written_keeps_its_arrays(tmp_path: Path) -> None:
    res = _result()
    result_transfer.spill(res, str(tmp_path / "missing"))
    assert res.spill is None and res.letterboxed is not None and res.crops is not None


def test_a_lost_file_fails_the_image_or_only_its_crops(tmp_path: Path) -> None:
    res = _result()
    result_transfer.spill(res, str(tmp_path))
    os.unlink(res.spill[0])
    lost = result_transfer.unspill(res)
    assert not lost.ok and "lost between processes" in lost.error
    crops_only = DecodeResult(filepath="x.jpg", ok=True, crops=_result().crops)
    result_transfer.spill(crops_only, str(tmp_path))
    os.unlink(crops_only.spill[0])
    lost = result_transfer.unspill(crops_only)
    assert lost.ok and "lost between processes" in lost.crop_error and lost.crops is None


def test_stale_folders_of_dead_processes_are_pruned(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"{result_transfer.PREFIX}{dead_pid}-abc"
    live = tmp_path / f"{result_transfer.PREFIX}{os.getpid()}-def"
    other = tmp_path / "unrelated"
    recent = tmp_path / f"{result_transfer.PREFIX}{dead_pid}-recent"
    for d in (stale, live, other, recent):
        d.mkdir()
    (stale / "1-x.bin").write_bytes(b"x")
    old = time.time() - result_transfer.STALE_AFTER_S - 60
    for d in (stale, live, other):
        os.utime(d, (old, old))
    assert result_transfer.prune_stale(str(tmp_path)) == [str(stale)]
    # a dead PID's folder that still changes may be a live run in another PID namespace
    assert not stale.exists() and live.exists() and other.exists() and recent.exists()


def test_pipe_can_be_chosen(monkeypatch) -> None:
    monkeypatch.setenv("EDGENET_DECODE_TRANSFER", "pipe")
    assert result_transfer.transfer_root() is None and result_transfer.make_transfer_dir() is None


@pytest.mark.skipif(result_transfer.transfer_root() is None, reason="no /dev/shm here")
def test_workers_return_arrays_by_file_and_clean_up(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    rng = np.random.default_rng(1)
    PIL.Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(img)
    job = DecodeJob(str(img), letterbox=True, crops=[[0.1, 0.2, 0.3, 0.4]])
    want = run_decode_job(job)
    executor = DecodeExecutor(1)
    try:
        folder = executor.transfer_dir
        assert folder is not None and Path(folder).is_dir()
        got = executor.result(executor.submit(job), job)
        assert got.ok and got.spill is None and not list(Path(folder).iterdir())
        np.testing.assert_array_equal(got.letterboxed, want.letterboxed)
        np.testing.assert_array_equal(got.crops, want.crops)
    finally:
        executor.shutdown()
    assert not Path(folder).exists()
