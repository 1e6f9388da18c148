"""recordings/native_heap.py: glibc tuning switched off, missing, refused (issue 13)."""

from __future__ import annotations

import logging

from recordings import native_heap


class Libc:
    def __init__(self, mallopt: int, trim: int) -> None:
        self._mallopt, self._trim, self.calls = mallopt, trim, []

    def mallopt(self, option, value):
        self.calls.append((option, value))
        return self._mallopt

    def malloc_trim(self, pad):
        return self._trim


def test_switched_off_by_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(native_heap.ENV, "0")
    assert native_heap._libc() is None


def test_no_libc_means_no_tuning(monkeypatch) -> None:
    monkeypatch.setenv(native_heap.ENV, "1")
    monkeypatch.setattr(native_heap.ctypes.util, "find_library", lambda name: None)
    assert native_heap._libc() is None
    monkeypatch.setattr(native_heap.ctypes.util, "find_library", lambda name: "libnot-there.so.9")
    assert native_heap._libc() is None  # OSError from CDLL
    monkeypatch.setattr(native_heap, "_LIBC", None)
    assert native_heap.limit_arenas() is False and native_heap.trim() is False


def test_refused_and_accepted_calls(monkeypatch, caplog) -> None:
    refusing = Libc(mallopt=0, trim=0)
    monkeypatch.setattr(native_heap, "_LIBC", refusing)
    with caplog.at_level(logging.DEBUG, logger="portcullis.recorder"):
        assert native_heap.limit_arenas(3) is False
    assert refusing.calls == [(native_heap.M_ARENA_MAX, 3)] and "refused" in caplog.text
    assert native_heap.trim() is False
    monkeypatch.setattr(native_heap, "_LIBC", Libc(mallopt=1, trim=1))
    assert native_heap.limit_arenas() is True and native_heap.trim() is True
