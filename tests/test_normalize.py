"""Canonical hosts and paths: the spellings an agent might use to dodge a rule."""

from __future__ import annotations

import pytest

from addons.core.normalize import normalize_host, normalize_path


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
        ("/v1/tables;jsessionid=1/users", "/v1/tables/users"),
        ("/v1/%252e%252e/x", "/v1/%2e%2e/x"),  # decoded once, as the upstream would
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
        # glibc resolves these as 127.0.0.1, so the gateway would connect there.
        ("127.000.000.001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("[::FFFF:7f00:1]", "127.0.0.1"),
        ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),  # full-width digits
        ("08.0.0.1", "08.0.0.1"),  # bad octal: not an address to glibc either, stays a name
        ("1.2.3.4.5", "1.2.3.4.5"),
        ("localhost.", "localhost"),
        ("LOCALHOST..", "localhost"),
    ],
)
def test_hosts(raw, canonical):
    assert normalize_host(raw) == canonical
