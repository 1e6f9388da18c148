"""Regular expressions written by rule authors, compiled with a linear-time engine (RE2).

A rule's pattern runs against text the agent chooses. With a backtracking engine
(Python's ``re``) an innocent-looking pattern such as ``^([a-zA-Z0-9]+\\.?)+@corp\\.example$``
takes exponential time on a 28-byte body and stalls every agent behind it. RE2 (the
``google-re2`` package) matches in time linear in the input, whatever the pattern; the
price is that it has no backreferences or look-around, so such patterns are refused when
the rules file loads, naming ``file:line:field``, instead of being accepted and slow.

Syntax notes for rule authors (docs/rules.md): RE2 syntax is Python's for everything RE2
supports (``(?i)``, classes, ``{m,n}``, named groups ``(?P<name>...)``); ``\\d``, ``\\w``,
``\\s`` and ``\\b`` are ASCII-only in RE2.
"""

from __future__ import annotations

from typing import Any, Protocol

import re2

from addons.core.rulefile import Where

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # errors are reported through `where`, not RE2's stderr logging


class UserRegex(Protocol):
    """What callers use of a compiled pattern (the ``re.Pattern`` subset RE2 provides)."""

    pattern: str

    def search(self, text: str) -> Any: ...

    def fullmatch(self, text: str) -> Any: ...


def compile_user_regex(pattern: Any, where: Where, *, ignore_case: bool = False) -> UserRegex:
    """Compile a rule author's pattern with RE2, or fail at ``where`` saying why."""
    if not isinstance(pattern, str):
        where.fail("a regex must be a string")
    try:
        return compile_linear(pattern, ignore_case=ignore_case)
    except re2.error as exc:
        where.fail(f"invalid regex {pattern!r} for RE2, the linear-time engine rules use "
                   f"(it has no backreferences or look-around): {_message(exc)}")


def compile_linear(pattern: str, *, ignore_case: bool = False) -> UserRegex:
    """Compile with RE2; raises ``re2.error``. For patterns the gateway builds itself."""
    options = _OPTIONS
    if ignore_case:
        options = re2.Options()
        options.log_errors = False
        options.case_sensitive = False
    return re2.compile(pattern, options)


def _message(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
