"""Canonical hosts and paths: the spellings an agent might use to dodge a rule."""

from __future__ import annotations

import pytest

from addons.normalize import normalize_host, normalize_path


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/v1/tables/users", "/v1/tables/users"),
        ("/v1//tables///users", "/v1/tables/users"),
        ("/v1/./tables/users", "/v1/tables/users"),
        ("/v1/x/../tables/users", "/v1/tables/users"),
        ("/v1/%74ables/users", "/v1/tables/users"),
        ("/v1%2Ftables%2fusers", "/v1/tables/users"),
        ("/v1/x/%2e%2e/tables/users", "/v1/tables/users"),
        ("/../../v1/tables", "/v1/tables"),
        ("/v1\\tables\\users", "/v1/tables/users"),
        ("/v1/tables/?drop=1", "/v1/tables/"),
        ("", "/"),
        ("/%ff/x", "/\udcff/x"),
    ],
)
def test_paths(raw, canonical):
    assert normalize_path(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("[::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("127.000.000.001", "127.000.000.001"),  # not an IP literal Python accepts: stays a name
    ],
)
def test_hosts(raw, canonical):
    assert normalize_host(raw) == canonical
