"""${env:NAME} / ${file:path} references: resolved at load, failing loudly, never echoing values."""

from __future__ import annotations

from pathlib import Path

import pytest

from addons.core.rulefile import Invalid, SourceMap
from addons.credentials.secretrefs import resolve
from addons.policy.engine import LoadContext

WHERE = SourceMap("rules.yaml").at(("credentials", 0, "set_header", "X-Key"))


def ctx(base: Path) -> LoadContext:
    return LoadContext(base, "rules.yaml")


def test_env_and_file_references_are_filled_in(tmp_path, monkeypatch):
    monkeypatch.setenv("PC_REF_A", "alpha")
    (tmp_path / "key").write_text("from-file\n")
    resolved = resolve("Bearer ${env:PC_REF_A}:${file:key}", WHERE, ctx(tmp_path))
    assert resolved.value == "Bearer alpha:from-file"  # one trailing newline dropped
    assert resolved.secrets == ("alpha", "from-file")
    assert resolved.sources == ("env:PC_REF_A", "file:key")
    assert "alpha" not in repr(resolved) and "alpha" not in str(resolved)


def test_literals_and_escapes(tmp_path):
    resolved = resolve("plain $${env:NOT_A_REF} $ text", WHERE, ctx(tmp_path))
    assert resolved.value == "plain ${env:NOT_A_REF} $ text"
    assert resolved.secrets == ()


@pytest.mark.parametrize(("template", "message"), [
    ("${env:PC_REF_UNSET}", "billing: environment variable PC_REF_UNSET is not set"),
    ("${env:PC_REF_EMPTY}", "billing: environment variable PC_REF_EMPTY is empty"),
    ("${vault:x}", "billing: invalid secret reference ${vault:x}"),
    ("${env:}", "invalid secret reference"),
    ("${file:missing}", "billing: cannot read secret file"),
    ("${file:empty}", "is empty"),
    (["list"], "expected a string"),
])
def test_problems_name_the_field_and_the_reference(tmp_path, monkeypatch, template, message):
    monkeypatch.delenv("PC_REF_UNSET", raising=False)
    monkeypatch.setenv("PC_REF_EMPTY", "")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(Invalid) as error:
        resolve(template, WHERE, ctx(tmp_path), "billing")
    assert message in str(error.value)
    assert "credentials[0].set_header.X-Key" in str(error.value)


def test_file_errors_do_not_leak_contents(tmp_path):
    (tmp_path / "binary").write_bytes(b"\xff\xfe-secret-bytes")
    with pytest.raises(Invalid) as error:
        resolve("${file:binary}", WHERE, ctx(tmp_path))
    assert "secret-bytes" not in str(error.value)
