"""Under CI a missing system part (Chromium, PostgreSQL, HAProxy) fails the run; on a
developer's machine the tests that need it skip with a message saying what to install."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> None:
    """Skip, or under CI fail: ``.ci/run`` installs every system package the tests use."""
    message = f"{what} (.ci/run installs it)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
