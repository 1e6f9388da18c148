"""What a hold may cost, and bodies a reviewer cannot be shown in full (issue 12).

* One identity may have at most ``max_pending_holds_per_identity`` pending holds (429).
* A holdable body is at most ``max_held_body`` bytes (413): a hold is memory until decided.
* A JSON body with a duplicated key is refused at hold time (400): placed past the
  64 KiB the review page shows, the second copy would deceive the reviewer.
* A body longer than the page shows comes with a warning and a download of the exact bytes.

A real gateway with its review API (ReviewRig); settings checked in-process too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from addons.core.rulefile import RuleFileError
from addons.holds.spec import (
    DEFAULT_MAX_HELD_BODY,
    DEFAULT_MAX_PENDING_HOLDS_PER_IDENTITY,
    parse_size,
)
from addons.policy.engine import compile_policy
from tests.support.approval_pages import LoggedIn
from tests.support.review import ReviewRig

LIMITS = """
max_pending_holds_per_identity: 3
max_held_body: 256KiB
"""
ASYNC = {"X-Portcullis-Wait": "async"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, confdir) -> Iterator[ReviewRig]:
    rig = ReviewRig(tmp_path_factory.mktemp("limits"), confdir, extra_rules=LIMITS)
    yield rig
    rig.stop()


def test_settings_are_validated_and_have_documented_defaults():
    base = "version: 1\nrules: []\n"
    policy = compile_policy(base + "max_pending_holds_per_identity: 5\nmax_held_body: 2MiB\n")
    assert policy.settings["max_pending_holds_per_identity"] == 5
    assert policy.settings["max_held_body"] == 2 * 1024 * 1024
    assert (DEFAULT_MAX_PENDING_HOLDS_PER_IDENTITY, DEFAULT_MAX_HELD_BODY) == (20, 1024 * 1024)
    assert parse_size("64KiB") == 65536 and parse_size(100) == 100
    for bad in ("max_pending_holds_per_identity: 0", "max_pending_holds_per_identity: true",
                "max_held_body: lots", "max_held_body: 0"):
        with pytest.raises(RuleFileError):
            compile_policy(base + bad + "\n")


def test_pending_holds_per_identity_are_capped_with_a_json_429(rig: ReviewRig):
    path = "/v1/anyone?t=cap"
    held = [rig.call("POST", f"{path}{i}", json={"i": i}, headers=ASYNC) for i in range(3)]
    assert [r.status_code for r in held] == [202] * 3
    over = rig.call("POST", f"{path}3", json={"i": 3}, headers=ASYNC)
    assert over.status_code == 429, over.text
    body = over.json()
    assert body["error"] == "too_many_pending_holds" and body["limit"] == 3 and body["flow_id"]
    assert "billing-agent" in body["reason"]
    # Wait mode counts the same, and other identities are not affected.
    assert rig.call("POST", f"{path}4", json={}, timeout=5).status_code == 429
    other = rig.call("POST", f"{path}5", identity="alice", json={}, headers=ASYNC)
    assert other.status_code == 202
    assert rig.received(f"{path}3") == []
    # A decision frees a place.
    rig.reject("dave", held[0].json()["flow_id"])
    assert rig.call("POST", f"{path}6", json={}, headers=ASYNC).status_code == 202
    for response in (*held[1:], other):
        rig.reject("dave", response.json()["flow_id"])
    pending = rig.api("dave", "GET", "/api/pending").json()["pending"]
    for hold in pending:
        rig.reject("dave", hold["flow_id"])


def test_a_body_larger_than_max_held_body_is_refused_with_413(rig: ReviewRig):
    path = "/v1/anyone?t=big"
    big = {"blob": "x" * (256 * 1024)}
    refused = rig.call("POST", path, json=big, headers=ASYNC)
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"] == "held_body_too_large" and refused.json()["limit"] == 256 * 1024
    assert rig.received(path) == []
    assert not [h for h in rig.api("dave", "GET", "/api/pending").json()["pending"] if h["url"].endswith(path)]


def test_a_duplicate_key_past_what_the_reviewer_sees_is_refused_at_hold_time(rig: ReviewRig):
    path = "/v1/anyone?t=dup"
    body = '{"to": "acct-42", "memo": "' + "x" * (67 * 1024) + '", "to": "attacker"}'
    refused = rig.call("POST", path, data=body, headers={**ASYNC, "Content-Type": "application/json"})
    assert refused.status_code == 400, refused.text
    answer = refused.json()
    assert answer["error"] == "duplicate_json_key" and answer["key"] == "to" and "'to'" in answer["reason"]
    nested = rig.call("POST", path, data='{"a": {"b": 1, "b": 2}}',
                      headers={**ASYNC, "Content-Type": "application/json"})
    assert nested.status_code == 400 and nested.json()["key"] == "b"
    by_case = rig.call("POST", path, data='{"to": "acct-42", "TO": "attacker"}',
                       headers={**ASYNC, "Content-Type": "application/json"})
    assert by_case.status_code == 400 and by_case.json()["key"] == "TO"
    assert rig.received(path) == []


def test_a_body_longer_than_the_page_shows_has_a_warning_and_an_exact_download(rig: ReviewRig):
    path = "/v1/anyone?t=long"
    raw = json.dumps({"to": "acct-42", "memo": "é" * (40 * 1024), "end": "tail"}).encode()
    pending = rig.call("POST", path, data=raw, headers={**ASYNC, "Content-Type": "application/json"})
    assert pending.status_code == 202, pending.text
    flow_id = pending.json()["flow_id"]
    details = rig.flow(flow_id, "dave")
    assert details["body_truncated"] and details["body_size"] == len(raw)
    assert "Download the exact bytes" in details["body_warning"]
    download = rig.api("dave", "GET", f"/api/flows/{flow_id}/body")
    assert download.status_code == 200 and download.content == raw
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert "attachment" in download.headers["Content-Disposition"]
    assert download.headers["X-Body-SHA256"] == hashlib.sha256(raw).hexdigest() == details["body_sha256"]
    assert rig.api(None, "GET", f"/api/flows/{flow_id}/body").status_code == 401
    rig.reject("dave", flow_id)
    gone = rig.api("dave", "GET", f"/api/flows/{flow_id}/body")
    assert gone.status_code == 410 and gone.json()["error"] == "body_released"


def test_the_review_page_shows_the_warning_and_the_download_link(rig: ReviewRig):
    path = "/v1/anyone?t=page"
    raw = json.dumps({"memo": "y" * (70 * 1024)}).encode()
    flow_id = rig.call("POST", path, data=raw, headers={**ASYNC, "Content-Type": "application/json"}).json()["flow_id"]
    session = LoggedIn(rig, "dave")
    page = session.get(f"/flows/{flow_id}")
    assert page.status_code == 200
    assert 'id="body-warning"' in page.text and f"/flows/{flow_id}/body" in page.text
    download = session.get(f"/flows/{flow_id}/body")
    assert download.status_code == 200 and download.content == raw
    rig.reject("dave", flow_id)
