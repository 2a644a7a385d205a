"""onnxruntime's optimised CPU graphs, and other providers' graphs, cached on disk with their
weights in a mapped file.

Why a cache: building a session for the full-size detector spends seconds in graph
optimisation (constant folding, Conv+activation fusion, NCHWc weight reordering) that gives
the same result on every start; the first session saves its optimised graph here and later
ones load it with optimisation off (benchmarks/NOTES.md, entry 4).

Why the weights sit in a file of their own (entry 17): a single-file ONNX graph is one
protobuf message, which onnxruntime parses and then copies into tensors: 0.77 s for the 560 MB
detector, 0.36 s for the classifier, on every start. Saved with its initializers in an external
data file, the same graph loads in 0.02-0.05 s: onnxruntime maps the file into memory and the
kernels read the weights from the page cache. The outputs are bit-identical (the same graph,
the same bytes) and the weights become shared, file-backed pages instead of a private copy.

Layout: `$EDGENET_HOME/ort-optimized/<model stem>.<key>/` holding `model.onnx` (the graph),
`weights.data` (its initializers) and `source.json` (the source file's path, size and times,
for pruning). The key covers the model file's identity, the onnxruntime version, the CPU's
ISA and this layout, so a changed model, a new onnxruntime or another machine sharing the
cache never reuses a stale graph. An entry is written in a hidden temporary folder and renamed
into place, so a concurrent start never sees half of one.

Optimised graphs are for the CPU provider alone: other providers partition the graph when the
session is built. For CUDA, DirectML and OpenVINO an entry holds the model's own graph,
unoptimised, with its weights moved out byte for byte (`mapped_weights`): onnxruntime still
optimises it at every build, but maps the weights instead of parsing them (entry 24); its
key is the model file's identity alone. TensorRT and CoreML read the original file: their own
parsers consume the graph, such a copy was never measured on them, and TensorRT caches its
engines anyway. `EDGENET_ORT_CACHE=0` turns both kinds off.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgenet import mapped_weights
from edgenet.pack import FramingError
from edgenet.providers import cache_dir, cpuinfo_flags_line

GRAPH_NAME = "model.onnx"
WEIGHTS_NAME = "weights.data"
SOURCE_NAME = "source.json"
# Part of every key: entries of another layout (edgenet <= 0.x wrote one .onnx file) are
# never read, and prune_optimized_cache removes them.
LAYOUT = "external-weights-1"
# The key's layout part for unoptimised copies, which depend on nothing but the model's bytes.
MAPPED_LAYOUT = "mapped-copy-1"
# The providers (the first one asked for) whose sessions are built from a mapped copy.
MAPPED_PROVIDERS = ("CUDAExecutionProvider", "DmlExecutionProvider", "OpenVINOExecutionProvider")
# Initializers at least this large go to weights.data; smaller ones (shapes, scales) stay in
# the graph, where parsing them costs nothing.
_EXTERNAL_MIN_BYTES = 1024
_STALE_TMP_S = 86400.0


def cache_folder() -> Path:
    return cache_dir() / "ort-optimized"


def _cpu_signature() -> str:
    """What an optimised CPU graph depends on: ISA flags (NCHWc block size, VNNI kernels)."""
    return f"{platform.machine()}|{platform.processor()}|{cpuinfo_flags_line()}"


def cache_on() -> bool:
    """False under `EDGENET_ORT_CACHE=0`: no entry of either kind is read or written."""
    return os.environ.get("EDGENET_ORT_CACHE", "1") != "0"


def _entry_graph(model_path: Path, *key_parts: str) -> Path:
    """`<cache>/<stem>.<key>/model.onnx` for this model file's identity and KEY_PARTS."""
    st = model_path.stat()
    ident = "|".join((f"{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}",
                      *key_parts))
    key = hashlib.sha256(ident.encode()).hexdigest()[:24]
    return cache_folder() / f"{model_path.stem}.{key}" / GRAPH_NAME


def optimized_model_path(model_path: Path, providers: Sequence[str]) -> Path | None:
    """The cached optimised graph (`<entry>/model.onnx`) for `model_path` on these providers;
    None when nothing is cached for them (not the CPU alone, or `EDGENET_ORT_CACHE=0`).
    The file may not exist yet."""
    if not cache_on() or list(providers) != ["CPUExecutionProvider"]:
        return None
    return _entry_graph(model_path, ort.__version__, _cpu_signature(), LAYOUT)


def mapped_model_path(model_path: Path, providers: Sequence[str]) -> Path | None:
    """Where the mapped copy of `model_path` for these providers lives (`<entry>/model.onnx`,
    maybe not written yet); None when their sessions read the original file (the CPU alone,
    TensorRT, CoreML, or `EDGENET_ORT_CACHE=0`)."""
    if not cache_on() or not providers or providers[0] not in MAPPED_PROVIDERS:
        return None
    return _entry_graph(model_path, MAPPED_LAYOUT)


def mapped_copy(model_path: Path, providers: Sequence[str]) -> Path | None:
    """The mapped copy of `model_path` for these providers, written now if missing; None
    where they read the original file, or the copy cannot be written (no space, a read-only
    cache, a model that keeps data outside its file): the caller then loads the original."""
    cached = mapped_model_path(model_path, providers)
    if cached is None or cached.is_file():
        return cached
    folder = _temp_folder(cached.parent)
    if folder is None:
        return None
    try:
        written = mapped_weights.write_mapped_copy(model_path, folder, GRAPH_NAME, WEIGHTS_NAME,
                                                   _EXTERNAL_MIN_BYTES)
    except (OSError, FramingError, ValueError):
        written = False
    if not written:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    commit(PendingEntry(model_path=model_path, cached=cached, folder=folder))
    return cached if cached.is_file() else None


def _source_record(model_path: Path) -> dict[str, Any]:
    st = model_path.stat()
    return {"source": str(model_path.resolve()), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


@dataclass(frozen=True)
class PendingEntry:
    """A cache entry being written: onnxruntime saves the optimised graph into `folder`
    while it builds the session; `commit` then renames the folder into place."""

    model_path: Path
    cached: Path  # <entry>/model.onnx, where the entry will live
    folder: Path  # hidden temporary folder beside it

    @property
    def graph(self) -> Path:
        return self.folder / GRAPH_NAME


def _temp_folder(entry: Path) -> Path | None:
    """A fresh hidden folder beside ENTRY to write it in; None where the cache is read-only."""
    # One per process and thread: two threads may build sessions of the same model at once.
    folder = entry.with_name(f".{entry.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    except OSError:
        return None
    return folder


def begin_entry(model_path: Path, cached: Path, so: ort.SessionOptions) -> PendingEntry | None:
    """Ask onnxruntime (through `so`) to save its optimised graph for a new cache entry;
    None when the cache folder cannot be written (the session is then just not cached)."""
    folder = _temp_folder(cached.parent)
    if folder is None:
        return None
    so.optimized_model_filepath = str(folder / GRAPH_NAME)
    # The data file's name is written into the graph relative to it, so the pair can move.
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", WEIGHTS_NAME)
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes",
        str(_EXTERNAL_MIN_BYTES))
    return PendingEntry(model_path=model_path, cached=cached, folder=folder)


def discard(pending: PendingEntry) -> None:
    shutil.rmtree(pending.folder, ignore_errors=True)


def commit(pending: PendingEntry) -> bool:
    """Put a saved entry in place (atomically: one folder rename) and prune stale entries.
    False (and nothing left behind) when onnxruntime saved nothing or another process
    committed the same entry first."""
    try:
        if not pending.graph.is_file():
            discard(pending)
            return False
        (pending.folder / SOURCE_NAME).write_text(
            json.dumps(_source_record(pending.model_path)), encoding="utf-8")
        entry = pending.cached.parent
        if entry.is_dir() and not pending.cached.is_file():  # what remove_entry left
            _remove_entry_folder(entry)
        os.rename(pending.folder, entry)
    except OSError:  # e.g. the entry appeared meanwhile: theirs is as good as ours
        discard(pending)
        return False
    prune_optimized_cache(keep=pending.cached)
    return True


def remove_entry(cached: Path) -> None:
    """Delete a cache entry onnxruntime could not load: its graph first, so that it is never
    tried again even where the rest cannot go yet (a weights file another process maps, on
    Windows); `commit` replaces such a graph-less folder."""
    try:
        cached.unlink(missing_ok=True)
    except OSError:
        pass
    _remove_entry_folder(cached.parent)


def _remove_entry_folder(entry: Path) -> bool:
    """Delete an entry, weights first: where a running process still maps them (Windows
    refuses to delete a mapped file) the entry stays whole for a later prune, rather than
    losing the record that would let that prune find it."""
    try:
        (entry / WEIGHTS_NAME).unlink(missing_ok=True)
    except OSError:
        return False
    shutil.rmtree(entry, ignore_errors=True)
    return True


def prune_optimized_cache(keep: Path | None = None) -> list[Path]:
    """Delete cached graphs whose source model is gone or changed; return their graph paths.

    Why: each entry is as large as its model (560 MB for the full-size detector), and every
    reconversion or deleted pack would otherwise leave one behind for good; an entry whose
    source no longer matches `source.json` can never be used again (its key would differ).
    Also removed: single-file entries of the older layout that edgenet wrote (a `.onnx` with
    a `.json` sidecar; never read since the key changed) and hidden temporary folders or
    files older than a day. Anything else in the folder is left alone.
    """
    folder = cache_folder()
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    keep_entry = keep.parent if keep is not None else None
    for meta in folder.glob(f"*/{SOURCE_NAME}"):
        entry = meta.parent
        if entry.name.startswith(".") or entry == keep_entry:
            continue
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
            source = Path(record["source"])
            stale = not source.is_file() or _source_record(source) != record
        except (OSError, ValueError, KeyError, TypeError):
            stale = True  # unreadable record: the entry cannot be trusted either
        if stale and _remove_entry_folder(entry):
            removed.append(entry / GRAPH_NAME)
    for meta in folder.glob("*.json"):  # the older single-file layout
        graph = meta.with_suffix(".onnx")
        for path in (graph, meta):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                continue
        removed.append(graph)
    for tmp in folder.glob(".*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink()
        except OSError:
            pass
    return removed


__all__ = ["cache_on", "optimized_model_path", "mapped_model_path", "mapped_copy",
           "prune_optimized_cache", "begin_entry", "commit", "discard", "remove_entry",
           "PendingEntry", "cache_folder"]
