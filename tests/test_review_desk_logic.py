"""The review desk (issue 16) without a browser: what the pages say and the live feed does.

Flask's test client against a real HoldDesk over an in-memory hold book
(tests.support.hold_desk); the recorder's row builder on a mitmproxy test flow. The
browser side (shortcuts, live updates in place, banners, phones, axe) is in
tests/test_review_desk_browser.py and tests/test_review_desk_screens.py.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy.test import tflow

from addons.core.flowstate import FlowState
from addons.core.rulefile import RuleFileError
from addons.core.secretforms import REDACTED, query_secrets
from addons.holds.binding import RequestPrint
from addons.holds.desk import HoldDesk
from addons.holds.notify import payload
from addons.holds.spec import Webhook, hold_spec
from addons.policy.engine import compile_policy
from addons.recorder.rows import event_row, flow_row
from review_ui import close_app, create_app
from review_ui.display import (
    body_summary,
    duration,
    duration_ms,
    query_params,
    url_exact,
    url_shown,
)
from review_ui.highlight import highlight_json
from review_ui.holds.live import SIGNED_OUT, Broker
from review_ui.holds.review import timeline
from review_ui.reviewers import ReviewerStore, add_reviewer
from tests.support.hold_desk import VERDICT, hold_record, running_desk
from tests.support.review import PASSWORD_SUFFIX
from tests.support.review_login import csrf_of

GROUPS = {"alice": ["finance-leads"], "bob": ["finance-leads"]}
SECRET = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def reviewers_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("desk-logic") / "reviewers.yaml"
    for name, groups in GROUPS.items():
        add_reviewer(path, name, groups, name + PASSWORD_SUFFIX)
    return path


@pytest.fixture(scope="module")
def desk() -> Iterator[HoldDesk]:
    with running_desk() as desk:
        yield desk


@pytest.fixture(scope="module")
def app(desk: HoldDesk, reviewers_file: Path):
    app = create_app(desk, ReviewerStore(reviewers_file))
    yield app
    close_app(app)


def held(desk: HoldDesk, url: str = "https://api.example/v1/refunds", body: bytes = b'{"amount": 900}',
         identity: str = "billing-agent", mode: str = "wait", **spec) -> str:
    flow_id = f"desk-{next(_ids)}"
    binding = RequestPrint("POST", url, "ab" * 32, (("content-type", "cd" * 32),))
    record = hold_record(flow_id, time.time(), identity=identity, binding=binding, verdict=VERDICT, body=body, **spec)
    record.mode = mode
    desk.bridge.call(desk.book.hold, record)
    return flow_id


def signed_in(app, name: str):
    client = app.test_client()
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"name": name, "password": name + PASSWORD_SUFFIX, "csrf_token": token})
    assert response.status_code == 302, response.text
    return client


def decide(client, flow_id: str, action: str, comment: str = ""):
    token = csrf_of(client.get(f"/flows/{flow_id}").text)
    return client.post(f"/flows/{flow_id}/decide", data={"action": action, "comment": comment, "csrf_token": token})


# --- display -------------------------------------------------------------------------------


def test_urls_are_decoded_for_reading_and_exact_one_click_away_with_secrets_redacted():
    url = f"https://api.example/v1/caf%C3%A9?note=cr%C3%A8me+br%C3%BBl%C3%A9e&api_key={SECRET}&x=a%26b&bad=%FF%E2%80%AE"
    shown = url_shown(url)
    assert shown.startswith("https://api.example/v1/café?note=crème brûlée&api_key=[redacted]")
    assert "x=a%26b" in shown  # an encoded separator stays encoded: it is part of the value
    assert "%FF" in shown and "%E2%80%AE" in shown  # invalid UTF-8 and a bidi override are not decoded
    assert url_exact(url) == url.replace(SECRET, REDACTED)
    assert ("api_key", REDACTED, True) in query_params(url)
    assert ("note", "crème brûlée", False) in query_params(url)


def test_query_parameters_that_look_like_secrets_by_name_or_value():
    found = query_secrets(f"t=1&api_key={SECRET}&authToken=abcd1234&q=ghp_{'a' * 36}&customer=cus_8841&key=ab")
    assert found == {SECRET, "abcd1234", "ghp_" + "a" * 36}  # "ab": too short to be redacted everywhere


def test_durations_and_summaries_read_like_a_human_wrote_them():
    assert duration_ms(208738) == "3 min 28 s" and duration(0.25) == "250 ms" and duration(7200) == "2 h 00 min"
    summary = body_summary(json.dumps({"note": "x" * 80, "amount": 250, "currency": "EUR", "customer": "cus_8841"}))
    assert summary.startswith("amount 250 · currency EUR · customer cus_8841")
    assert body_summary("[1, 2]") == "2 items" and body_summary("") == ""


def test_the_recording_redacts_secret_query_parameters_as_it_redacts_headers():
    flow = tflow.tflow(resp=True)
    flow.request.path = f"/v1/charges?api_key={SECRET}&limit=3"
    flow.response.content = json.dumps({"echo": SECRET, "url": flow.request.path}).encode()
    row = flow_row(flow, FlowState(flow.id), "allowed", 65536, ())()
    assert row["query"] == f"api_key={REDACTED}&limit=3"
    assert SECRET not in json.dumps(row, default=str)


def test_values_masked_without_a_marker_are_marked_by_the_paths_masking_recorded():
    body = json.dumps({"items": [{"email": "email_3f9a1c2b04de", "card": "****4242", "n": 1}], "dob": None,
                       "name": "Ada"})
    html = str(highlight_json(body, ["$.items[*].email", "$.items[*].card", "$.dob"]))
    assert html.count('masked" title=') == 3 and html.count("class=\"j-str masked\"") == 2
    assert '<span class="j-str">&#34;Ada&#34;</span>' in html
    assert "masked" not in str(highlight_json(body))


def test_a_held_events_url_is_recorded_without_its_query_secrets():
    row = event_row("f1", "held", time.time(), "gateway",
                    {"url": f"https://api.example/v1/refunds?api_key={SECRET}&t=1", "rule": "refunds"}, (), 1)
    assert SECRET not in row["detail"] and json.loads(row["detail"])["url"].endswith(f"api_key={REDACTED}&t=1")


def test_the_audit_trail_is_in_the_order_things_happened():
    events = [{"kind": "approved", "at": 3.0, "actor": "bob", "detail": {}},
              {"kind": "held", "at": 1.0, "actor": "gateway", "detail": {}},
              {"kind": "completed", "at": 2.0, "actor": "gateway", "detail": {"status_code": 202}}]
    ordered = timeline(events, "async")
    assert [e["kind"] for e in ordered] == ["held", "completed", "approved"]
    assert "pending" in ordered[1]["label"] and "re-sends" in ordered[1]["label"]


# --- the pages -----------------------------------------------------------------------------


def test_the_review_page_leads_with_the_evidence_and_never_shows_a_query_secret(app, desk):
    flow_id = held(desk, url=f"https://api.example/v1/refunds?api_key={SECRET}&order=A%2D7",
                   body=json.dumps({"amount": 250, "currency": "EUR", "customer": "cus_8841"}).encode())
    alice = signed_in(app, "alice")
    page = alice.get(f"/flows/{flow_id}").text
    assert SECRET not in page and SECRET not in alice.get("/").text
    for path in ("/api/pending", f"/api/flows/{flow_id}", "/queue/rows"):
        assert SECRET not in alice.get(path).text, path
    backlog = app.extensions["portcullis"].broker._backlog
    assert any(flow_id in payload for _, _, payload in backlog)
    assert not any(SECRET in payload for _, _, payload in backlog)  # the live feed
    assert page.index('id="body-summary"') < page.index('id="body"') < page.index('id="decide-form"')
    assert "amount 250 · currency EUR · customer cus_8841" in page
    assert "order=A-7" in page  # decoded for reading
    assert 'class="j-key"' in page  # highlighted on the server
    assert "amount 250" in alice.get("/").text  # the queue says what the request does
    decide(signed_in(app, "bob"), flow_id, "reject", "test over")


def test_a_rule_summary_line_leads_in_the_queue_the_page_the_api_the_event_and_notifications(app, desk):
    flow_id = held(desk, body=json.dumps({"amount": 250, "currency": "EUR", "customer": "cus_8841"}).encode(),
                   summary="{$.amount} {$.currency} refund for {$.customer} ({$.missing})")
    line = "250 EUR refund for cus_8841 (?)"
    alice = signed_in(app, "alice")
    assert line in alice.get("/").text
    page = alice.get(f"/flows/{flow_id}").text
    assert line in page[page.index('id="body-summary"'):page.index('id="why-h"')]
    assert "automatic summary" not in page[page.index('id="body-summary"'):page.index('id="why-h"')]
    assert desk.get(flow_id)["summary_line"] == line
    assert desk.events_of(flow_id)[0]["detail"]["summary"] == line  # recorded with the held event
    hook = Webhook("https://hooks.example/x", "json", frozenset({"held"}))
    assert payload(hook, "held", desk.find(flow_id), None)["summary_line"] == line
    decide(signed_in(app, "bob"), flow_id, "reject", "test over")


@pytest.mark.parametrize(("template", "message"), [
    ("no placeholder", "at least one"), ("{$.a..b}", "cannot read"), ("{amount}", "at least one"), ("", "must be text"),
])
def test_a_bad_summary_template_is_refused_with_file_and_line(template, message):
    with pytest.raises(RuleFileError) as caught:
        compile_policy(f"version: 1\nrules:\n  - name: r\n    match: {{}}\n    action: hold\n"
                       f"    summary: {json.dumps(template)}\n", "rules.yaml")
    assert "rules.yaml:6:5: rules[0].summary:" in str(caught.value) and message in str(caught.value)


def test_a_body_cut_at_64_kib_is_still_laid_out_coloured_and_folded(app, desk):
    items = [{"sku": f"A-{i}", "qty": i} for i in range(3000)]
    cut = json.dumps({"items": items})[:64 * 1024]
    flow_id = held(desk, body=cut.encode())
    page = signed_in(app, "alice").get(f"/flows/{flow_id}").text
    body = page[page.index('class="fold'):page.index('id="decide"')]
    assert 'class="fold folded"' in body and "body-unfold" in body  # longer than a screen: folded
    assert body.count('<span class="j-key">&#34;sku&#34;</span>') > 1000
    assert '\n      <span class="j-key">&#34;qty&#34;</span>: <span class="j-num">1</span>\n' in body
    decide(signed_in(app, "bob"), flow_id, "reject", "test over")


def test_a_rejection_needs_a_comment(app, desk):
    flow_id = held(desk)
    alice = signed_in(app, "alice")
    # Signing in again after a stale decision lands on the decide URL: it shows the page.
    assert alice.get(f"/flows/{flow_id}/decide").headers["Location"].endswith(f"/flows/{flow_id}")
    refused = decide(alice, flow_id, "reject", "   ")
    assert refused.status_code == 400 and "A rejection needs a comment" in refused.text
    assert desk.get(flow_id)["status"] == "pending"
    assert decide(alice, flow_id, "reject", "No ticket").status_code == 302
    assert desk.get(flow_id)["status"] == "rejected"
    lenient = held(desk, reject_comment_required=False)  # the rule says reject_comment: optional
    assert 'data-comment-required="false"' in alice.get(f"/flows/{lenient}").text
    assert decide(alice, lenient, "reject", "").status_code == 302
    assert desk.get(lenient)["status"] == "rejected"
    rules = "version: 1\nrules:\n  - name: r\n    match: {}\n    action: hold\n    reject_comment: VALUE\n"
    assert hold_spec(compile_policy(rules.replace("VALUE", "optional"), "rules.yaml").rules[0], None, "x") \
        .reject_comment_required is False
    with pytest.raises(RuleFileError, match="rules.yaml:6:5: rules\\[0\\].reject_comment: reject_comment must be"):
        compile_policy(rules.replace("VALUE", "maybe"), "rules.yaml")


def test_approving_an_async_hold_says_nothing_is_forwarded_until_the_agent_re_sends(app, desk):
    flow_id = held(desk, mode="async")
    alice = signed_in(app, "alice")
    assert decide(alice, flow_id, "approve").status_code == 302
    page = alice.get(f"/flows/{flow_id}").text
    assert "Nothing is forwarded yet" in page and "re-sends the request" in page
    assert "the request was forwarded" not in page and "forwarded the request" not in page
    waiting = held(desk)
    assert decide(alice, waiting, "approve").status_code == 302
    assert "Approved; the gateway forwarded the request to the upstream." in alice.get(f"/flows/{waiting}").text


def test_earlier_decisions_on_identical_and_similar_requests_are_shown(app, desk):
    bob = signed_in(app, "bob")
    first = held(desk, identity="ctx-agent")
    assert decide(bob, first, "reject", "duplicate refund").status_code == 302
    other = held(desk, identity="ctx-agent", url="https://api.example/v1/refunds?order=B-2")
    assert decide(bob, other, "approve").status_code == 302
    again = held(desk, identity="ctx-agent")
    unrelated = held(desk, identity="someone-else")
    page = signed_in(app, "alice").get(f"/flows/{again}").text
    similar = page[page.index('id="similar"'):page.index('id="recent-h"')]
    assert first in similar and other in similar and unrelated not in similar
    assert similar.count("identical request") == 1 and "duplicate refund" in similar
    assert "Next hold" in page  # the other pending holds are a click away
    for flow_id in (again, unrelated):
        decide(bob, flow_id, "reject", "test over")


def test_the_sql_page_redirects_the_favicon_and_every_page_links_an_icon(app):
    response = app.test_client().get("/favicon.ico", follow_redirects=True)
    assert response.status_code == 200 and response.mimetype.startswith("image/")
    assert 'rel="icon"' in app.test_client().get("/login").text


# --- the live feed is authenticated per message -------------------------------------------


def test_a_stream_ends_with_signed_out_as_soon_as_its_session_does():
    broker, allowed = Broker(), [True]
    stream = broker.stream(None, lifetime=30, allowed=lambda: allowed[0])
    assert "event: hello" in next(stream)
    broker.publish("held", {"flow_id": "x"})
    assert "event: held" in next(stream)
    allowed[0] = False
    broker.publish("held", {"flow_id": "secret-of-the-next-hold"})
    assert next(stream) == SIGNED_OUT  # the event is not delivered to a signed-out stream
    with pytest.raises(StopIteration):
        next(stream)


def test_signing_out_elsewhere_ends_an_open_event_stream_within_seconds(app):
    alice = signed_in(app, "alice")
    response = alice.get("/api/events", buffered=False)
    chunks = iter(response.response)
    assert b"event: hello" in next(chunks)
    token = csrf_of(alice.get("/").text)
    assert alice.post("/logout", data={"csrf_token": token}).status_code == 302  # same session, as another tab
    start = time.monotonic()
    assert next(chunks).decode() == SIGNED_OUT
    assert time.monotonic() - start < 3
    response.close()

