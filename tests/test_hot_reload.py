"""Editing the rules file of a running gateway: good edits apply within 2 s, bad ones are refused."""

from __future__ import annotations

import time

import requests

BLOCK_A = """\
version: 1
rules:
  - name: block-a
    match: {path: /a}
    action: block
"""
BLOCK_B = BLOCK_A.replace("block-a", "block-b").replace("/a}", "/b}")


def status(url: str) -> int:
    return requests.get(url, timeout=10).status_code


def wait_for_status(url: str, expected: int, within: float = 2.0) -> float:
    started = time.monotonic()
    while status(url) != expected:
        assert time.monotonic() - started < within, f"{url} did not become {expected} within {within}s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_valid_edit_applies_and_invalid_edit_keeps_last_good_rules(start_gateway, use_gateway, upstream):
    gateway = start_gateway(BLOCK_A)
    use_gateway(gateway)
    assert (status(upstream.url("/a")), status(upstream.url("/b"))) == (403, 200)

    gateway.rules.write_text(BLOCK_B)
    wait_for_status(upstream.url("/b"), 403, within=2.0)
    assert status(upstream.url("/a")) == 200
    gateway.wait_for_output("loaded 1 rules")

    gateway.rules.write_text(BLOCK_B + "    colour: red\n")
    line = gateway.wait_for_output("rules file edit rejected", timeout=5)
    assert "previous rules stay in force" in line
    gateway.wait_for_output(f"{gateway.rules}:6:5: rules[0].colour: unknown rule key 'colour'")
    assert (status(upstream.url("/a")), status(upstream.url("/b"))) == (200, 403)
