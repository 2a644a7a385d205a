"""edgenet.heap: freed heap pages go back to the OS after the models load (Linux/glibc)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from edgenet import heap, pipeline

glibc_only = pytest.mark.skipif(heap._malloc_trim() is None,
                                reason="malloc_trim is glibc's (Linux)")


@glibc_only
def test_release_freed_heap_returns_kept_pages_to_the_os() -> None:
    # ~200 MB of 1 KB blocks (malloc'd, not pymalloc'd), freed below a block that stays, so
    # glibc cannot shrink its heap from the top and keeps the pages: only a trim returns them.
    script = textwrap.dedent("""
        import os
        from edgenet.heap import release_freed_heap

        def rss_mb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

        blocks = [bytes(1000) + bytes([i % 251]) for i in range(200_000)]
        pin = bytes(1000) + b"pin"
        del blocks
        kept = rss_mb()
        assert release_freed_heap()
        print(kept, rss_mb())
        assert pin
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    kept, after = float(out[0]), float(out[1])
    assert kept - after > 100, (kept, after)


def test_edgenet_trim_0_turns_it_off(monkeypatch) -> None:
    monkeypatch.setenv("EDGENET_TRIM", "0")
    assert heap.release_freed_heap() is False


def test_load_components_trims_once_after_building_sessions(monkeypatch) -> None:
    from edgenet.demo import demo_pack_dir

    calls: list[int] = []
    monkeypatch.setattr(heap, "release_freed_heap", lambda: calls.append(1) or True)
    comps = pipeline.load_components(pipeline.PipelineConfig(instances=[],
                                                             model=demo_pack_dir()))
    assert calls == [1]
    # Nothing built (every model injected): nothing to give back.
    pipeline.load_components(pipeline.PipelineConfig(
        instances=[], model=demo_pack_dir(), detector=comps.detector,
        classifier=comps.classifier, ensemble=comps.ensemble))
    assert calls == [1]


def test_a_worker_job_trims_after_handing_its_arrays_over(tmp_path, monkeypatch) -> None:
    """A decode job in a worker (its arrays go by file) trims once they are written; an
    in-process job (no transfer folder) leaves the main process's heap alone."""
    import numpy as np
    import PIL.Image

    from edgenet import decode_workers
    from edgenet.result_transfer import unspill

    img = tmp_path / "a.jpg"
    PIL.Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(img)
    calls: list[int] = []
    monkeypatch.setattr(decode_workers, "release_freed_heap", lambda: calls.append(1) or True)
    inline = decode_workers.run_decode_job(decode_workers.DecodeJob(str(img), letterbox=True))
    assert inline.ok and calls == []
    folder = tmp_path / "transfer"
    folder.mkdir()
    pooled = decode_workers.run_decode_job(decode_workers.DecodeJob(
        str(img), letterbox=True, transfer_dir=str(folder)))
    assert calls == [1]
    unspill(pooled)
    assert pooled.ok and pooled.letterboxed is not None
