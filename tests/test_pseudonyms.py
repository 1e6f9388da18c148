"""The pseudonym key: from the environment, or generated once into the confdir (0600)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

import pytest

from addons.masking.pseudonyms import (
    KEY_FILE,
    MaskKeyError,
    Pseudonyms,
    canonical,
    clean_prefix,
    load_key,
)


def test_key_is_generated_once_with_mode_0600_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("PORTCULLIS_MASK_KEY", raising=False)
    first = load_key(tmp_path)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) == 32
    assert load_key(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary files left


def test_environment_key_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTCULLIS_MASK_KEY", "from-env")
    token = Pseudonyms(tmp_path).token("ann@example.com", "email")
    digest = hmac.new(b"from-env", b"ann@example.com", hashlib.sha256).hexdigest()
    assert token == f"email_{digest[:12]}"
    assert not (tmp_path / KEY_FILE).exists()


def test_unsafe_or_broken_key_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("PORTCULLIS_MASK_KEY", raising=False)
    path = tmp_path / KEY_FILE
    path.write_text("00" * 32)
    path.chmod(0o644)
    with pytest.raises(MaskKeyError, match="chmod 600"):
        load_key(tmp_path)
    path.chmod(0o600)
    path.write_text("not hex")
    with pytest.raises(MaskKeyError, match="cannot read the mask key"):
        load_key(tmp_path)
    with pytest.raises(MaskKeyError, match="no PORTCULLIS_MASK_KEY"):
        load_key(None)


def test_tokens_are_stable_distinct_and_typed_values_agree():
    names = Pseudonyms(key=b"k" * 32)
    assert names.token("a@x.com", "email") == names.token("a@x.com", "email")
    assert names.token("a@x.com", "email") != names.token("b@x.com", "email")
    assert names.token(42, "n") == names.token("42", "n")
    assert canonical({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    assert clean_prefix("X-User Email!") == "x_user_email" and clean_prefix("☃") == "value"
    assert Pseudonyms(key=b"other-key-16byte").token("a@x.com", "email") != names.token("a@x.com", "email")
