"""edgenet.graph_cache: onnxruntime's optimised CPU graphs cached with mapped weight files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tinyonnx import affine_model

from edgenet import graph_cache, providers

CPU = ["CPUExecutionProvider"]


def _dense_model(path: Path, scale: float = 1e-3) -> Path:
    """y = x @ W + b with a 4 x 256 weight (4 KB: large enough to go to the weights file)."""
    weight = np.arange(4 * 256, dtype=np.float32).reshape(4, 256) * np.float32(scale)
    return affine_model(path, weight, np.ones(256, dtype=np.float32))


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_entry_is_written_once_and_loaded_from_its_weights_file(
        tmp_path: Path, cache_on: Path, loaded_paths: list[str]) -> None:
    model = _dense_model(tmp_path / "pack" / "m.onnx")
    first = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    cached = graph_cache.optimized_model_path(model, CPU)
    assert cached is not None and cached.is_file()
    entry = cached.parent
    assert sorted(p.name for p in entry.iterdir()) == ["model.onnx", "source.json",
                                                       "weights.data"]
    # the weights live in the data file, not in the graph's protobuf
    assert (entry / "weights.data").stat().st_size >= 4 * 256 * 4
    assert cached.stat().st_size < 4 * 256 * 4
    assert [p.name for p in cache_on.iterdir()] == [entry.name]  # no temporary left

    again = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    assert loaded_paths == [str(model), str(cached)]
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, X @ (np.arange(1024, dtype=np.float32).reshape(4, 256)
                                           * 1e-3) + 1, rtol=1e-6)


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_weights", "garble_graph"])
def test_damaged_entry_is_rebuilt_not_fatal(tmp_path: Path, cache_on: Path,
                                            loaded_paths: list[str], damage: str) -> None:
    model = _dense_model(tmp_path / "m.onnx")
    first = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    cached = graph_cache.optimized_model_path(model, CPU)
    assert cached is not None
    weights = cached.parent / "weights.data"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete_weights":
        weights.unlink()
    else:
        cached.write_bytes(b"not an onnx file")
    healed = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    np.testing.assert_array_equal(first, healed)
    # tried the entry, then optimised the source again and wrote a whole new entry
    assert loaded_paths == [str(model), str(cached), str(model)]
    assert weights.stat().st_size >= 4 * 256 * 4 and cached.stat().st_size > 100


def test_key_follows_model_runtime_and_switch(tmp_path: Path, cache_on: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = _dense_model(tmp_path / "m.onnx")
    key = graph_cache.optimized_model_path(model, CPU)
    assert key is not None and key.name == "model.onnx"
    assert key.parent.name.startswith("m.")
    time.sleep(0.01)
    _dense_model(model)  # rewritten: new mtime/ctime, so a new key
    assert graph_cache.optimized_model_path(model, CPU) != key
    assert graph_cache.optimized_model_path(model, ["CUDAExecutionProvider", *CPU]) is None
    monkeypatch.setenv("EDGENET_ORT_CACHE", "0")
    assert graph_cache.optimized_model_path(model, CPU) is None


def test_a_concurrent_writer_loses_cleanly(tmp_path: Path, cache_on: Path,
                                           loaded_paths: list[str]) -> None:
    """Another start committed the same entry while this one was optimising: this one's
    rename fails, its temporary folder goes, the first entry stays and is used."""
    model = _dense_model(tmp_path / "m.onnx")
    first = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    cached = graph_cache.optimized_model_path(model, CPU)
    assert cached is not None and cached.is_file()
    so = ort.SessionOptions()
    pending = graph_cache.begin_entry(model, cached, so)
    assert pending is not None
    ort.InferenceSession(str(model), sess_options=so, providers=CPU)
    assert pending.graph.is_file() and (pending.folder / "weights.data").is_file()
    assert graph_cache.commit(pending) is False
    assert not pending.folder.exists()
    assert [p.name for p in cache_on.iterdir()] == [cached.parent.name]
    again = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    assert loaded_paths[-1] == str(cached)
    np.testing.assert_array_equal(first, again)


def test_prune_removes_stale_entries_old_layout_and_old_temporaries(
        tmp_path: Path, cache_on: Path) -> None:
    a, b = _dense_model(tmp_path / "a" / "m.onnx"), _dense_model(tmp_path / "b" / "m.onnx")
    for path in (a, b):
        providers.make_session(path, device="cpu")
    old_a = graph_cache.optimized_model_path(a, CPU)
    old_b = graph_cache.optimized_model_path(b, CPU)
    assert old_a is not None and old_b is not None
    assert old_a.is_file() and old_b.is_file() and old_a != old_b  # same name, two entries
    # what edgenet's older single-file layout left: a graph with its sidecar
    legacy = cache_on / "m.0123456789abcdef01234567.onnx"
    legacy.write_bytes(b"x")
    legacy.with_suffix(".json").write_text("{}")
    unknown = cache_on / "notes.txt"  # not ours: left alone
    unknown.write_text("keep")
    stale_tmp = cache_on / ".m.abc.123.tmp"
    stale_tmp.mkdir()
    (stale_tmp / "model.onnx").write_bytes(b"half")
    os.utime(stale_tmp, (time.time() - 2 * 86400,) * 2)
    fresh_tmp = cache_on / ".m.def.456.tmp"  # another start writing right now
    fresh_tmp.mkdir()

    time.sleep(0.01)
    _dense_model(a, scale=2e-3)  # reconverted: its old entry can never be used again
    providers.make_session(a, device="cpu")  # writes the new entry, prunes the rest
    new_a = graph_cache.optimized_model_path(a, CPU)
    assert new_a is not None and new_a.is_file()
    assert not old_a.parent.exists() and old_b.is_file()
    assert not legacy.exists() and not legacy.with_suffix(".json").exists()
    assert unknown.is_file() and fresh_tmp.is_dir() and not stale_tmp.exists()
    b.unlink()  # pack deleted
    assert graph_cache.prune_optimized_cache() == [old_b]
    assert not old_b.parent.exists() and new_a.is_file()


def test_prune_leaves_an_entry_whole_while_its_weights_are_in_use(
        tmp_path: Path, cache_on: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows refuses to delete a mapped file: the stale entry must stay whole (with its
    source record) for a later prune instead of losing the record and leaking the weights."""
    model = _dense_model(tmp_path / "m.onnx")
    providers.make_session(model, device="cpu")
    cached = graph_cache.optimized_model_path(model, CPU)
    assert cached is not None and cached.is_file()
    model.unlink()  # stale now
    real_unlink = Path.unlink

    def mapped(self: Path, missing_ok: bool = False) -> None:
        if self.name == "weights.data":
            raise PermissionError(13, "in use by another process", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", mapped)
    assert graph_cache.prune_optimized_cache() == []
    assert sorted(p.name for p in cached.parent.iterdir()) == ["model.onnx", "source.json",
                                                               "weights.data"]
    monkeypatch.setattr(Path, "unlink", real_unlink)  # the process has exited
    assert graph_cache.prune_optimized_cache() == [cached]
    assert not cached.parent.exists()


def test_damaged_entry_that_cannot_be_deleted_runs_uncached(
        tmp_path: Path, cache_on: Path, loaded_paths: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only cache holding a damaged entry: the session is optimised from the source
    (once, no retry loop), the run goes on, and nothing is saved over the entry."""
    model = _dense_model(tmp_path / "m.onnx")
    first = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    cached = graph_cache.optimized_model_path(model, CPU)
    assert cached is not None
    cached.write_bytes(b"not an onnx file")
    real_unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:
        if cache_on in self.parents:
            raise PermissionError(13, "read-only file system", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    out = providers.make_session(model, device="cpu").run(None, {"x": X})[0]
    np.testing.assert_array_equal(first, out)
    assert loaded_paths == [str(model), str(cached), str(model)]
    assert cached.read_bytes() == b"not an onnx file"
