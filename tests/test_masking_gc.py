"""Masking pauses the process-wide garbage collector; overlapping maskings must not
re-enable it under each other (they run on worker threads)."""

from __future__ import annotations

import gc
import threading

from addons.masking.addon import _no_gc_pauses


def test_overlapping_maskings_keep_the_collector_off_until_the_last_one_ends():
    assert gc.isenabled()
    first_in, second_in, first_out, release_second = (threading.Event() for _ in range(4))
    seen: dict[str, bool] = {}

    def first() -> None:
        with _no_gc_pauses():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with _no_gc_pauses():
            second_in.set()
            first_out.wait(5)
            seen["after the first ended"] = gc.isenabled()
            release_second.wait(5)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_out.wait(5)
    release_second.set()
    for t in threads:
        t.join(5)
    assert seen == {"after the first ended": False}
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with _no_gc_pauses():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
