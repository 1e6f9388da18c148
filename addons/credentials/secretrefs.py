"""Secret references in rules files: ``${env:NAME}`` and ``${file:/path}``.

A value such as ``"Bearer ${env:STRIPE_SECRET_KEY}"`` is resolved when the rules file
is (re)loaded. A reference that cannot be resolved (unset variable, unreadable or empty
file) rejects the file with a message naming the field and the variable or path, never
the value: a credential rule must not silently send an empty header.

The resolved value is kept in a :class:`Resolved`, whose ``repr`` hides it, together
with the secret parts, so that callers can mask exactly those parts wherever they
might show up again (recordings, echoed responses).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addons.core.rulefile import Where
from addons.policy.engine import LoadContext

#: ``$${`` is a literal ``${``; ``${kind:ref}`` is a reference.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
SCHEMES = ("env", "file")


@dataclass(frozen=True)
class Resolved:
    """A configured value with its secret references filled in."""

    value: str = field(repr=False)
    #: The substituted secret parts (empty when the value holds no reference).
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: Where each part came from, e.g. ``env:STRIPE_KEY`` (safe to show).
    sources: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"<secret from {', '.join(self.sources)}>" if self.sources else "<value>"


def resolve(template: Any, where: Where, context: LoadContext, label: str = "") -> Resolved:
    """Fill in the references in ``template``; ``where.fail`` if any cannot be resolved.

    ``label`` names the rule in messages (e.g. ``credential rule 'stripe'``).
    """
    if isinstance(template, bool) or not isinstance(template, str | int):
        where.fail("expected a string (secrets come from ${env:NAME} or ${file:/path})")
    text = str(template)
    prefix = f"{label}: " if label else ""
    parts: list[str] = []
    secrets: list[str] = []
    sources: list[str] = []
    position = 0
    for found in _REFERENCE.finditer(text):
        parts.append(text[position:found.start()])
        position = found.end()
        if found.group(0) == "$${":
            parts.append("${")
            continue
        scheme, sep, ref = found.group(1).partition(":")
        if not sep or scheme not in SCHEMES or not ref:
            where.fail(f"{prefix}invalid secret reference ${{{found.group(1)}}}; "
                       "use ${env:NAME} or ${file:/path}")
        secret = _read_env(ref, where, prefix) if scheme == "env" else _read_file(ref, where, context, prefix)
        parts.append(secret)
        secrets.append(secret)
        sources.append(f"{scheme}:{ref}")
    parts.append(text[position:])
    return Resolved("".join(parts), tuple(secrets), tuple(sources))


def _read_env(name: str, where: Where, prefix: str) -> str:
    value = os.environ.get(name)
    if value is None:
        where.fail(f"{prefix}environment variable {name} is not set")
    if not value:
        where.fail(f"{prefix}environment variable {name} is empty")
    return value


def _read_file(ref: str, where: Where, context: LoadContext, prefix: str) -> str:
    path = (context.base_dir / Path(ref).expanduser()).resolve()
    try:
        value = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        where.fail(f"{prefix}cannot read secret file {path}: {reason}")
    # Secret files usually end with a newline that is not part of the secret.
    value = value.rstrip("\r\n")
    if not value:
        where.fail(f"{prefix}secret file {path} is empty")
    return value
