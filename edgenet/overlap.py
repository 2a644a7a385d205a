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
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    """A producer exception, carried through the queue to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def run_ahead(source: Iterable[T], maxsize: int = 8, name: str = "edgenet-stage") -> Iterator[T]:
    """Yield SOURCE's items in order while a background thread computes up to MAXSIZE ahead.

    SOURCE is iterated only by that thread. Closing the returned generator (or an exception in
    the consumer) tells the thread to stop after the item it is computing, and waits for it, so
    nothing touches shared state (e.g. a decode pool being shut down) after this returns.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=max(1, int(maxsize)))
    stop = threading.Event()

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                items.put(obj, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Raised(err))
        finally:
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
            obj = items.get()
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
