"""Run one part of the pipeline's stage chain on its own thread, ahead of the rest.

Why: the pipeline is one chain of generators (decode -> detector -> crop -> classifier ->
ensemble). On a GPU, onnxruntime's `run` releases the GIL while the device works, so with the
chain cut in two, the detector's batches (and the numpy work around them: the float tensor,
NMS, crop dispatch) run while the classifier's batches run, instead of one after the other.
On a CPU both halves want the same cores, so the pipeline only cuts the chain on GPU
providers (`pipeline.PipelineRun`; `EDGENET_OVERLAP=0/1` overrides).

Order is kept (one producer, one FIFO queue), memory stays bounded (the queue holds at most
`maxsize` items), an exception in the producer is raised in the consumer at the point where
the item would have arrived, and closing the consumer stops and joins the producer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    """A producer exception, carried through the queue to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def run_ahead(source: Iterable[T], maxsize: int = 8, name: str = "edgenet-stage",
              waits: dict[str, float] | None = None) -> Iterator[T]:
    """Yield SOURCE's items in order while a background thread computes up to MAXSIZE ahead.

    SOURCE is iterated only by that thread. Closing the returned generator (or an exception in
    the consumer) tells the thread to stop after the item it is computing, and waits for it, so
    nothing touches shared state (e.g. a decode pool being shut down) after this returns.

    WAITS, when given, receives seconds: `thread_s` (the producer thread's life),
    `blocked_s` (the producer waiting for room in the queue: the consumer is slower) and
    `starved_s` (the consumer waiting for an item: the producer is slower). Which thread of a
    chain sets the rate is the one that neither waits for its input nor for its output (the
    stage sums alone misled benchmarks/NOTES.md entries 9 and 20; entry 23).
    """
    items: queue.Queue[object] = queue.Queue(maxsize=max(1, int(maxsize)))
    stop = threading.Event()
    tally = waits if waits is not None else {}
    for key in ("thread_s", "blocked_s", "starved_s"):
        tally.setdefault(key, 0.0)

    def put(obj: object) -> bool:
        try:
            items.put_nowait(obj)
            return True
        except queue.Full:
            pass
        t0 = time.perf_counter()
        try:
            while not stop.is_set():
                try:
                    items.put(obj, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False
        finally:
            tally["blocked_s"] += time.perf_counter() - t0

    def produce() -> None:
        started = time.perf_counter()
        try:
            for item in source:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Raised(err))
        finally:
            tally["thread_s"] = time.perf_counter() - started
            close = getattr(source, "close", None)
            if stop.is_set() and callable(close):
                try:
                    close()  # run the source's own cleanup (its finally blocks) on this thread
                except Exception:  # noqa: BLE001 - best effort while stopping
                    pass

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            t0 = time.perf_counter()
            obj = items.get()
            tally["starved_s"] += time.perf_counter() - t0
            if obj is _DONE:
                return
            if isinstance(obj, _Raised):
                raise obj.error
            yield obj  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                while True:
                    items.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
