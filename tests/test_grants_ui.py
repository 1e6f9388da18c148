"""Safe grants in the review UI (Flask test client over an in-memory hold book).

A grant is offered only where the rule sets ``grant:`` and, for a non-idempotent
method, ``grant_unsafe_methods: true``; the approved page and the grants page show its
full scope (identity, method, URL, body summary and hash, expiry) and each use, and
Revoke works from both, returning to the page it was pressed on.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from addons.holds.binding import RequestPrint
from addons.holds.desk import HoldDesk
from review_ui import close_app, create_app
from review_ui.reviewers import ReviewerStore, add_reviewer
from tests.support.hold_desk import PRINT, VERDICT, hold_record, running_desk
from tests.support.review import PASSWORD_SUFFIX
from tests.support.review_login import csrf_of

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def tokens_and_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("grants-ui") / "reviewers.yaml"
    tokens = {n: add_reviewer(path, n, ["finance-leads"], n + PASSWORD_SUFFIX)[1] for n in ("alice", "bob")}
    return path, tokens


@pytest.fixture(scope="module")
def desk() -> Iterator[HoldDesk]:
    with running_desk() as desk:
        yield desk


@pytest.fixture(scope="module")
def app(desk: HoldDesk, tokens_and_file):
    app = create_app(desk, ReviewerStore(tokens_and_file[0]))
    yield app
    close_app(app)


def held(desk: HoldDesk, method: str = "GET", url: str = "https://api.example/v1/reports",
         body: bytes = b'{"day": "2026-12-01"}', **spec) -> tuple[str, RequestPrint]:
    flow_id = f"grant-ui-{next(_ids)}"
    binding = RequestPrint(method, url, f"{next(_ids):064x}", PRINT.headers)
    spec.setdefault("grant_unsafe_methods", False)
    desk.bridge.call(desk.book.hold, hold_record(flow_id, time.time(), binding=binding, body=body, **spec))
    return flow_id, binding


def signed_in(app, name: str):
    client = app.test_client()
    token = csrf_of(client.get("/login").text)
    assert client.post("/login", data={"name": name, "password": name + PASSWORD_SUFFIX,
                                       "csrf_token": token}).status_code == 302
    return client


def api_approve(app, tokens_and_file, flow_id: str, **body):
    token = tokens_and_file[1]["alice"]
    return app.test_client().post(f"/api/flows/{flow_id}/approve", json=body,
                                  headers={"Authorization": f"Bearer {token}"})


def test_a_post_is_offered_no_grant_unless_the_rule_says_grant_unsafe_methods(app, desk, tokens_and_file):
    refund, _ = held(desk, "POST", "https://api.example/v1/refunds", b'{"amount": 900}', grant=900.0)
    alice = signed_in(app, "alice")
    page = alice.get(f"/flows/{refund}").text
    assert 'id="approve"' in page and 'id="approve-grant"' not in page and 'id="grant"' not in page
    refused = api_approve(app, tokens_and_file, refund, grant="5m")
    assert (refused.status_code, refused.json["error"]) == (400, "grant_unsafe_method")
    assert "POST is not idempotent" in refused.json["message"]
    shown = app.test_client().get(f"/api/flows/{refund}",
                                  headers={"Authorization": f"Bearer {tokens_and_file[1]['bob']}"}).json
    assert shown["max_grant_s"] is None and "grant_unsafe_methods: true" in shown["grant_unavailable"]

    unsafe_ok, _ = held(desk, "POST", "https://api.example/v1/refunds", b'{"amount": 901}', grant=900.0,
                        grant_unsafe_methods=True)
    assert 'id="approve-grant"' in alice.get(f"/flows/{unsafe_ok}").text
    assert api_approve(app, tokens_and_file, unsafe_ok, grant="5m").json["grant_id"]

    report, _ = held(desk, grant=900.0)
    assert 'id="approve-grant"' in alice.get(f"/flows/{report}").text
    no_rule, _ = held(desk)
    assert 'id="approve-grant"' not in alice.get(f"/flows/{no_rule}").text


def scope_of(html: str, grant_id: str) -> str:
    found = re.search(rf'<section class="card grant-scope" id="grant-{grant_id}".*?</section>', html, re.S)
    assert found, f"no scope of grant {grant_id} on the page"
    return found.group(0)


def test_the_approved_page_and_the_grants_page_show_the_full_scope_and_each_use(app, desk, tokens_and_file):
    first, print1 = held(desk, url="https://api.example/v1/reports?day=1", body=b'{"day": 1, "format": "csv"}',
                         grant=900.0)
    second, _ = held(desk, url="https://api.example/v1/reports?day=1", body=b'{"day": 2, "format": "csv"}',
                     grant=900.0)
    grant1 = api_approve(app, tokens_and_file, first, grant="10m", comment="daily run").json["grant_id"]
    grant2 = api_approve(app, tokens_and_file, second, grant="5m").json["grant_id"]
    for n in (1, 2):
        assert desk.bridge.call(desk.book.use_grant, f"use-{first}-{n}", "billing-agent", print1, VERDICT)

    bob = signed_in(app, "bob")
    approved = scope_of(bob.get(f"/flows/{first}").text, grant1)
    listed = bob.get("/grants").text
    one, two = scope_of(listed, grant1), scope_of(listed, grant2)
    for html in (approved, one):
        for shown in ("billing-agent", ">GET<", "https://api.example/v1/reports?day=1", "day=1, format=&#34;csv&#34;",
                      print1.body_sha256, "content-type", "alice", "daily run", f"use-{first}-1", f"use-{first}-2",
                      f'/audit/flows/use-{first}-2', 'class="g-uses">2<', 'data-deadline="'):
            assert shown in html, shown
    # Two grants for the same request line differ where they differ: body summary, hash, expiry.
    assert "day=2" in two and "day=2" not in one and print1.body_sha256 not in two
    assert re.search(r'data-deadline="([\d.]+)"', one).group(1) != re.search(r'data-deadline="([\d.]+)"', two).group(1)
    assert "Not used yet." in two
    # The Decisions page's short list tells them apart too, and links to the full scope.
    decisions = bob.get("/decisions").text
    for grant_id, summary in ((grant1, "day=1, format="), (grant2, "day=2, format=")):
        row = re.search(rf'<tr data-grant-id="{grant_id}">.*?</tr>', decisions, re.S).group(0)
        assert f'href="/grants#grant-{grant_id}"' in row and summary in row


def test_revoke_from_the_approved_page_returns_there_and_from_the_grants_page_to_it(app, desk, tokens_and_file):
    flow_id, binding = held(desk, grant=900.0)
    grant_id = api_approve(app, tokens_and_file, flow_id, grant="5m").json["grant_id"]
    bob = signed_in(app, "bob")
    page = bob.get(f"/flows/{flow_id}").text
    revoked = bob.post(f"/grants/{grant_id}/revocation", data={"csrf_token": csrf_of(page), "next": f"/flows/{flow_id}"})
    assert (revoked.status_code, revoked.headers["Location"]) == (302, f"/flows/{flow_id}")
    after = bob.get(f"/flows/{flow_id}").text
    assert f"Grant {grant_id} for billing-agent: GET https://api.example/v1/reports revoked after 0 uses" in after
    assert 'id="grant-gone"' in after and f'id="grant-{grant_id}"' not in after
    assert desk.bridge.call(desk.book.use_grant, "later", "billing-agent", binding, VERDICT) is None
    events = [e["kind"] for e in desk.events_of(flow_id)]
    assert events[-1] == "grant_revoked"

    other, _ = held(desk, grant=900.0)
    other_grant = api_approve(app, tokens_and_file, other, grant="5m").json["grant_id"]
    listed = bob.get("/grants").text
    back = bob.post(f"/grants/{other_grant}/revocation", data={"csrf_token": csrf_of(listed), "next": "/grants"})
    assert back.headers["Location"] == "/grants"
    assert f'id="grant-{other_grant}"' not in bob.get("/grants").text
    # Revoke never redirects off-site, and needs the CSRF token.
    third, _ = held(desk, grant=900.0)
    third_grant = api_approve(app, tokens_and_file, third, grant="5m").json["grant_id"]
    assert bob.post(f"/grants/{third_grant}/revocation", data={"next": "/grants"}).status_code == 403
    away = bob.post(f"/grants/{third_grant}/revocation", data={"csrf_token": csrf_of(listed), "next": "//evil.example/"})
    assert away.headers["Location"] == "/grants"
    gone = bob.post(f"/grants/{third_grant}/revocation", data={"csrf_token": csrf_of(listed), "next": "/grants"})
    assert "no active grant" in bob.get(gone.headers["Location"]).text
