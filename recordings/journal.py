"""A crash-safe note of each flow in flight, written before the flow goes anywhere.

A DuckDB commit costs about a millisecond of CPU however small it is, so committing
every request before forwarding it would halve the gateway's throughput. Instead the
recorder appends one short JSON line per flow here, with a plain ``write()`` (a few
microseconds): ``received`` before a request is forwarded, and the final decision
before a denial is returned. The rows themselves reach DuckDB in batches.

Data written with ``write()`` survives the death of the process (``kill -9``, OOM) —
it is in the kernel's page cache — though not a power cut. Every couple of seconds the
recorder starts a new journal file and deletes the old one once everything queued before
the switch is committed, so the journal only ever holds the last few seconds. On start,
entries whose flows never reached the database are recorded from the journal.

Entries carry no headers or bodies, only the request line (with known secrets redacted),
so no secret reaches the disk through here either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, db: Path) -> None:
        self.db = db
        self._fd: int | None = None
        self._path: Path | None = None
        self._generation = max((_generation(p) for p in self.files()), default=0)

    def files(self) -> list[Path]:
        """Journal files of this database, oldest first."""
        return sorted(self.db.parent.glob(f"{self.db.name}.journal.*"), key=_generation)

    def open(self) -> None:
        self._generation += 1
        self._path = self.db.parent / f"{self.db.name}.journal.{self._generation}"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def note(self, entry: dict[str, Any]) -> None:
        """Append one entry; raises OSError when the disk refuses it."""
        self._write((_encode(entry) + "\n").encode())

    def note_fields(self, kind: str, flow_id: str, at: float, fields: dict[str, Any]) -> None:
        """``note({"k": kind, "id": flow_id, "at": at, **fields})``: the same JSON line,
        put together here (once per flow on the event loop: a quarter of the encoder's cost)."""
        parts = [f'{{"k": {_string(kind)}, "id": {_string(flow_id)}, "at": {at!r}']
        for key, value in fields.items():
            if value is None:
                text = "null"
            elif type(value) is str:
                text = _string(value)
            elif type(value) is int:
                text = str(value)
            else:
                text = _encode(value)
            parts.append(f", {_string(key)}: {text}")
        parts.append("}\n")
        self._write("".join(parts).encode())

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise OSError("the journal is closed")
        written = os.write(self._fd, data)
        if written != len(data):  # e.g. the disk filled up mid-line (the reader skips the torn line)
            raise OSError(f"short write to {self._path}: {written} of {len(data)} bytes")

    def empty(self) -> bool:
        return self._fd is None or os.fstat(self._fd).st_size == 0

    def rotate(self) -> Path | None:
        """Start a new file; returns the previous one (delete it once its flows are committed)."""
        old_fd, old_path = self._fd, self._path
        self.open()
        if old_fd is not None:
            os.close(old_fd)
        return old_path

    def close(self, delete: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if delete:
            for path in self.files():
                path.unlink(missing_ok=True)

    def entries(self) -> list[dict[str, Any]]:
        """Every readable entry of every journal file (a line torn by a crash is skipped)."""
        found = []
        for path in self.files():
            for line in path.read_bytes().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    found.append(entry)
        return found


#: One encoder for every line: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode
_string = json.encoder.encode_basestring  # a JSON string literal, as _encode writes it


def _generation(path: Path) -> int:
    suffix = path.name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0
