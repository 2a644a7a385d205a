"""Decoded arrays from worker processes by file in memory-backed storage, not by pipe.

Why (measured, benchmarks/NOTES.md entry 10): `ProcessPoolExecutor` returns a result by
pickling it into a pipe, and the parent's result thread reads it back in pipe-sized chunks
(64 KB on Linux), re-taking the GIL for each and copying each into a growing buffer. A decoded
image's letterbox (3.7 MB at 1280 x 960) and crops (0.7 MB each) make ~5-10 MB per image, and
py-spy showed that thread holding the GIL more than any other in a pipeline run with decode
workers: time the stage threads (and, on a GPU, the device's next batch) wait for. Here a
worker writes the arrays to one file in a tmpfs folder (`/dev/shm`, which is memory) and the
result carries only the path and layout; the parent reads the file with one `readinto` (the
GIL is released during the copy), views the arrays in that one buffer and deletes the file.

Linux only, where `/dev/shm` exists: elsewhere, and whenever a write fails (a full `/dev/shm`:
Docker's default is 64 MB), results travel through the pipe as before.
`EDGENET_DECODE_TRANSFER=pipe` turns it off. Each run's folder is
`/dev/shm/edgenet-decode-<pid>-*`, removed at shutdown; folders of dead processes (a run
killed with -9), idle for 10 minutes, are removed by the next run that makes one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

SPILL_FIELDS = ("letterboxed", "crops")  # DecodeResult's array fields
SPILL_HEADROOM = 16 * 2**20  # left free in /dev/shm after a result's file
PREFIX = "edgenet-decode-"
SHM = "/dev/shm"


def transfer_root() -> str | None:
    """Where transfer folders go: /dev/shm when usable, None for the pipe."""
    if os.environ.get("EDGENET_DECODE_TRANSFER", "file") == "pipe":
        return None
    if os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK):
        return SHM
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


# A folder is stale when its process is gone AND nothing changed in it for this long: a live
# run in another PID namespace sharing /dev/shm (`--ipc=host`) may carry a PID that looks
# dead from here, but it adds and removes files all the time.
STALE_AFTER_S = 600


def prune_stale(root: str) -> list[str]:
    """Remove transfer folders under ROOT whose process is gone (and that are idle for
    STALE_AFTER_S); returns what was removed."""
    import time

    removed = []
    for entry in Path(root).glob(f"{PREFIX}*"):
        try:
            pid = int(entry.name[len(PREFIX):].split("-", 1)[0])
            idle = time.time() - entry.stat().st_mtime
        except (ValueError, OSError):
            continue
        if entry.is_dir() and idle > STALE_AFTER_S and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed


def make_transfer_dir() -> str | None:
    """A fresh folder for this process's decode results, or None (use the pipe)."""
    root = transfer_root()
    if root is None:
        return None
    try:
        prune_stale(root)
        return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root)
    except OSError:
        return None


def remove_transfer_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged writer can still put in DIRECTORY's file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _write_arrays(path: str, arrays: list[Any]) -> bool:
    """The raw bytes of contiguous ARRAYS, one after another, in a new file at PATH; False
    (and no file) if that fails, e.g. no space left in /dev/shm."""
    import numpy as np

    try:
        with open(path, "wb", buffering=0) as fh:
            for arr in arrays:
                if arr.nbytes:
                    fh.write(arr.reshape(-1).view(np.uint8).data)
        return True
    except OSError:
        _unlink(path)
        return False


def _read_and_delete(path: str, nbytes: int) -> Any:
    """NBYTES from the file at PATH into one new uint8 buffer (`readinto`: the copy runs
    without the GIL), then the file is deleted, whatever happened; OSError if short."""
    import numpy as np

    buf = np.empty(nbytes, dtype=np.uint8)
    try:
        with open(path, "rb", buffering=0) as fh:
            view, got = buf.data, 0
            while got < nbytes:
                n = fh.readinto(view[got:])
                if not n:
                    raise OSError(f"{path}: {got} of {nbytes} bytes")
                got += n
    finally:
        _unlink(path)
    return buf


def spill(result: Any, directory: str) -> None:
    """In a worker: write RESULT's arrays to one file in DIRECTORY, keep only their layout.

    If the file cannot be written, the arrays stay in the result (the pipe carries them)."""
    import numpy as np

    arrays = [(name, np.ascontiguousarray(getattr(result, name))) for name in SPILL_FIELDS
              if isinstance(getattr(result, name), np.ndarray)]
    if not arrays:
        return
    total = sum(arr.nbytes for _, arr in arrays)
    path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex}.bin")
    try:
        if free_bytes(directory) < total + SPILL_HEADROOM:
            return  # a small /dev/shm (Docker: 64 MB) that is full now: the pipe, not a write
    except OSError:
        return
    if not _write_arrays(path, [arr for _, arr in arrays]):
        return
    layout, offset = [], 0
    for name, arr in arrays:
        layout.append((name, offset, arr.shape, arr.dtype.str))
        offset += arr.nbytes
        setattr(result, name, None)
    result.spill = (path, total, layout)


def unspill(result: Any) -> Any:
    """In the parent: put the arrays of a spilled RESULT back (views of one buffer) and delete
    its file. A file that cannot be read fails the image as a failed decode would: the
    detector's input lost -> `error`; only crops lost -> `crop_error`."""
    if getattr(result, "spill", None) is None:
        return result
    import numpy as np

    path, total, layout = result.spill
    result.spill = None
    try:
        buf = _read_and_delete(path, total)
    except OSError as err:
        message = f"decoded image lost between processes ({err})"
        if any(name == "letterboxed" for name, *_ in layout):
            result.ok, result.error = False, message  # the detector fails for this image
        else:
            result.crop_error = message  # only the classifier does
        return result
    for name, offset, shape, dtype in layout:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        setattr(result, name, buf[offset:offset + count * dt.itemsize].view(dt).reshape(shape))
    return result


# Decoded frames kept for the crop job (which otherwise decodes the image again) only while
# /dev/shm keeps FRAME_HEADROOM free beside them and the run's frames stay under FRAME_BUDGET:
# a frame is 9-48 MB (3-12 MP), and the pipeline's queues can hold ~90 images between the
# two jobs (14 workers, batch 8); past the budget an image is decoded twice, as before.
FRAME_HEADROOM = 512 * 2**20
FRAME_BUDGET = 1024 * 2**20


def _frames_bytes(directory: str) -> int:
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("frame-"):
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
    return total


def save_frame(arr: Any, directory: str) -> tuple[str, tuple[int, ...]] | None:
    """In a worker: keep a decoded RGB frame in DIRECTORY for the image's crop job; None when
    /dev/shm is short of room, the run's frames would pass FRAME_BUDGET, or the write fails
    (the crop job then decodes the file)."""
    import numpy as np

    arr = np.ascontiguousarray(arr)
    path = os.path.join(directory, f"frame-{os.getpid()}-{uuid.uuid4().hex}.bin")
    try:
        if (free_bytes(directory) < 4 * arr.nbytes + FRAME_HEADROOM
                or _frames_bytes(directory) + arr.nbytes > FRAME_BUDGET):
            return None
    except OSError:
        return None
    return (path, tuple(arr.shape)) if _write_arrays(path, [arr]) else None


def take_frame(frame: tuple[str, tuple[int, ...]]) -> Any | None:
    """In the crop job's worker: the kept frame (its file deleted), or None if it is gone."""
    import numpy as np

    path, shape = frame
    try:
        return _read_and_delete(path, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    except OSError:
        return None


def drop_frame(frame: tuple[str, tuple[int, ...]] | None) -> None:
    """In the parent: a kept frame no crop job will read (no detection selected)."""
    if frame is not None:
        _unlink(frame[0])
