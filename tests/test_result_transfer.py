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


def test_a_result_that_cannot_be_written_keeps_its_arrays(tmp_path: Path, monkeypatch) -> None:
    res = _result()
    result_transfer.spill(res, str(tmp_path / "missing"))
    assert res.spill is None and res.letterboxed is not None and res.crops is not None
    monkeypatch.setattr(result_transfer, "SPILL_HEADROOM", 1 << 62)  # as a full /dev/shm
    result_transfer.spill(res, str(tmp_path))
    assert res.spill is None and res.letterboxed is not None and not list(tmp_path.iterdir())


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


def test_a_kept_frame_gives_the_same_crops_and_is_deleted(tmp_path: Path) -> None:
    """The letterbox job keeps the decoded pixels; the crop job crops from them (no second
    decode), deletes them, and gives exactly the crops of a decode; a vanished frame falls
    back to decoding the file."""
    img = tmp_path / "a.jpg"
    PIL.Image.fromarray(np.random.default_rng(3).integers(0, 256, (500, 700, 3),
                                                          dtype=np.uint8)).save(img)
    folder = tmp_path / "transfer"
    folder.mkdir()
    first = run_decode_job(DecodeJob(str(img), letterbox=True, keep_frame=True,
                                     transfer_dir=str(folder)))
    result_transfer.unspill(first)
    assert first.ok and first.frame is not None and Path(first.frame[0]).is_file()
    boxes = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.7]]
    want = run_decode_job(DecodeJob(str(img), crops=boxes))
    got = run_decode_job(DecodeJob(str(img), crops=boxes, frame=first.frame))
    assert got.ok and (got.orig_w, got.orig_h) == (700, 500)
    np.testing.assert_array_equal(got.crops, want.crops)
    assert not Path(first.frame[0]).exists()  # read once, then gone
    again = run_decode_job(DecodeJob(str(img), crops=boxes, frame=first.frame))
    np.testing.assert_array_equal(again.crops, want.crops)  # decoded the file instead
    # no room: nothing kept (a small /dev/shm, e.g. Docker's 64 MB)
    assert result_transfer.save_frame(np.zeros((10, 10, 3), np.uint8), str(folder)) is not None
    tiny = np.zeros((1, 1, 3), np.uint8)
    old = result_transfer.FRAME_HEADROOM
    try:
        result_transfer.FRAME_HEADROOM = 1 << 62
        assert result_transfer.save_frame(tiny, str(folder)) is None
    finally:
        result_transfer.FRAME_HEADROOM = old
    # the run's frames stay within FRAME_BUDGET (the 10 x 10 one above is still there)
    old = result_transfer.FRAME_BUDGET
    try:
        result_transfer.FRAME_BUDGET = 300 + 3
        assert result_transfer.save_frame(tiny, str(folder)) is not None  # 300 + 3 bytes
        assert result_transfer.save_frame(tiny, str(folder)) is None  # would be 306
    finally:
        result_transfer.FRAME_BUDGET = old


@pytest.mark.skipif(result_transfer.transfer_root() is None, reason="no /dev/shm here")
@pytest.mark.parametrize("threshold", [None, 1.5])  # 1.5: no detection is ever selected
def test_a_pipeline_run_leaves_no_frame_behind(tmp_path: Path, monkeypatch, threshold) -> None:
    """With workers every image's kept frame is read by its crop job or dropped (no detection
    selected, detector failure): nothing accumulates in /dev/shm during a long run; what is
    left when the run shuts its workers down is looked at before the folder goes."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tinypack import build_tiny_pack, write_images

    from edgenet import decode_workers, pipeline, stages
    from edgenet import predictions as P
    from edgenet.instances import prepare_instances

    left: list[list[str]] = []
    real_remove = decode_workers.remove_transfer_dir

    def look_then_remove(path: str | None) -> None:
        if path:
            left.append(sorted(p.name for p in Path(path).iterdir()))
        real_remove(path)

    monkeypatch.setattr(decode_workers, "remove_transfer_dir", look_then_remove)
    crop_jobs_with_frames, dropped = [], []
    real_submit, real_drop = decode_workers.DecodeExecutor.submit, stages.drop_frame

    def submit(self, job):
        if job.crops is not None and not job.letterbox:
            crop_jobs_with_frames.append(job.frame is not None)
        return real_submit(self, job)

    def drop(frame):
        dropped.append(frame is not None)
        real_drop(frame)

    monkeypatch.setattr(decode_workers.DecodeExecutor, "submit", submit)
    monkeypatch.setattr(stages, "drop_frame", drop)
    pack = build_tiny_pack(tmp_path / "pack")
    write_images(tmp_path / "imgs")
    instances = prepare_instances(folders=[str(tmp_path / "imgs")])
    extra = {} if threshold is None else {"detection_threshold_for_classification": threshold}
    plain, _ = pipeline.run_pipeline(pipeline.PipelineConfig(
        instances=instances, model=pack, workers=0, handle_signals=False, **extra))
    preds, stats = pipeline.run_pipeline(pipeline.PipelineConfig(
        instances=instances, model=pack, workers=1, handle_signals=False, **extra))
    if threshold is None:
        assert stats["counts"]["crops"] > 0
        assert crop_jobs_with_frames and all(crop_jobs_with_frames)  # no image decoded twice
    else:
        assert stats["counts"]["crops"] == 0 and not crop_jobs_with_frames
        assert True in dropped  # images with nothing to crop gave their frames back
    assert left == [[]]  # one worker pool, its folder empty at the end
    assert P.dumps_predictions(preds) == P.dumps_predictions(plain)
