"""Injected credentials never reach a log line, even when another module logs a URL."""

from __future__ import annotations

import logging
import time

import requests

from addons.core import logscrub
from tests.support.upstream import Canned

SECRET = "sk_live_logscrub_0123456789"


def test_scrubber_replaces_every_known_secret_in_formatted_messages():
    logger = logging.getLogger("test.logscrub")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logscrub.install(logger)
        logscrub.set_secrets(["abc", "abcdef"])
        logger.warning("GET /x?key=%s and %s", "abcdef", "abc")
        logscrub.set_secrets([])
        logger.warning("now %s is not secret", "abc")
    finally:
        logger.removeHandler(handler)
    assert records == ["GET /x?key=[redacted] and [redacted]", "now abc is not secret"]


def test_a_timed_out_request_with_an_injected_query_key_is_logged_without_it(start_gateway, use_gateway, upstream):
    upstream.routes["/slow"] = lambda seen: time.sleep(3) or Canned(200, {"late": True})
    gateway = start_gateway("""
        version: 1
        credentials:
          - match: {path: /slow}
            query: {api_key: "${env:LEGACY_KEY}"}
            plain_http: true
    """, "--upstream-timeout", "0.5", env={"LEGACY_KEY": SECRET})
    use_gateway(gateway)
    response = requests.get(upstream.url("/slow"), timeout=20)
    assert response.status_code == 504
    assert upstream.received[0].path == f"/slow?api_key={SECRET}"  # it really was injected
    gateway.wait_for_output("did not answer")
    gateway.stop()
    assert SECRET not in gateway.output
    assert "[redacted]" in gateway.output
