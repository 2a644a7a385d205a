"""overlap.run_ahead: order, bounded read-ahead, exceptions, and stopping the producer."""

from __future__ import annotations

import threading
import time

import pytest

from edgenet.overlap import run_ahead


def test_order_and_thread() -> None:
    seen: set[str] = set()

    def source():
        for i in range(50):
            seen.add(threading.current_thread().name)
            yield i

    assert list(run_ahead(source(), maxsize=3, name="t-ahead")) == list(range(50))
    assert seen == {"t-ahead"}


def test_read_ahead_is_bounded() -> None:
    produced: list[int] = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    it = run_ahead(source(), maxsize=4)
    assert next(it) == 0
    time.sleep(0.3)
    # one taken, at most 4 queued, one more computed and waiting to be queued
    assert len(produced) <= 6
    it.close()


def test_producer_exception_arrives_in_order() -> None:
    class Boom(RuntimeError):
        pass

    def source():
        yield 1
        yield 2
        raise Boom("decode pool broke")

    it = run_ahead(source(), maxsize=8)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(Boom, match="decode pool broke"):
        next(it)


def test_closing_the_consumer_stops_and_cleans_up_the_producer() -> None:
    cleaned = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            cleaned.set()

    before = threading.active_count()
    it = run_ahead(source(), maxsize=2, name="t-stop")
    assert next(it) == 0
    it.close()  # returns only once the producer thread has finished
    assert cleaned.is_set()
    assert not any(t.name == "t-stop" for t in threading.enumerate())
    assert threading.active_count() <= before


def test_consumer_exception_with_closing_stops_the_producer() -> None:
    # How the pipeline uses it: the stream is closed in a finally, whatever went wrong.
    from contextlib import closing

    def consume():
        with closing(run_ahead(iter(range(1000)), maxsize=2, name="t-err")) as it:
            for x in it:
                if x == 5:
                    raise KeyError("consumer failed")

    with pytest.raises(KeyError):
        consume()
    assert not any(t.name == "t-err" for t in threading.enumerate())


def test_waits_say_which_side_is_slower() -> None:
    # A slow consumer: the producer waits for room (blocked), the consumer hardly waits.
    waits: dict[str, float] = {}
    for _ in run_ahead(iter(range(6)), maxsize=1, name="t-slow-consumer", waits=waits):
        time.sleep(0.05)
    assert waits["blocked_s"] > 0.15 and waits["starved_s"] < 0.05
    assert waits["thread_s"] >= waits["blocked_s"]

    # A slow producer: the consumer waits for items (starved), the producer is never blocked.
    def slow():
        for i in range(6):
            time.sleep(0.05)
            yield i

    waits = {}
    assert list(run_ahead(slow(), maxsize=8, name="t-slow-producer", waits=waits)) == list(
        range(6))
    assert waits["starved_s"] > 0.2 and waits["blocked_s"] == 0.0
