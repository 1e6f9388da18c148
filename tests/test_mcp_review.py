"""The review page shows an MCP call as what it is (review_ui/holds/templates/_mcp_call.html):
server, tool, arguments pretty-printed, the session's earlier tool calls. Flask's test
client over an in-memory hold book, as tests/test_review_ui_logic.py."""

from __future__ import annotations

import json
import time

import pytest

from addons.holds.desk import HoldDesk
from review_ui import close_app, create_app
from review_ui.reviewers import ReviewerStore, add_reviewer
from tests.support.hold_desk import hold_record, running_desk
from tests.support.review import PASSWORD_SUFFIX
from tests.support.review_login import csrf_of

MCP = {"server": "https://mcp.internal.example.com/mcp", "method": "tools/call", "tool": "delete_note",
       "arguments": json.dumps({"name": "q3 <plan>", "force": True}, indent=2, sort_keys=True),
       "session": "sess-123",
       "earlier": [{"flow_id": "f1", "at": 1.0, "tool": "list_notes", "arguments": "{}", "decision": "allowed"},
                   {"flow_id": "f2", "at": 2.0, "tool": "drop_database", "arguments": '{"name":"prod"}',
                    "decision": "blocked"}]}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    path = tmp_path_factory.mktemp("mcp-review") / "reviewers.yaml"
    add_reviewer(path, "alice", ["finance-leads"], "alice" + PASSWORD_SUFFIX)
    with running_desk() as desk:
        app = create_app(desk, ReviewerStore(path))
        app.desk_for_test = desk
        yield app
        close_app(app)


def _page(app, desk: HoldDesk, mcp) -> str:
    record = hold_record(f"mcp-{time.monotonic_ns()}", time.time())
    record.mcp = mcp
    desk.bridge.call(desk.book.hold, record)
    client = app.test_client()
    token = csrf_of(client.get("/login").text)
    client.post("/login", data={"name": "alice", "password": "alice" + PASSWORD_SUFFIX, "csrf_token": token})
    page = client.get(f"/flows/{record.id}")
    assert page.status_code == 200
    return page.text


def test_review_page_shows_server_tool_arguments_and_earlier_calls(app):
    html = _page(app, app.desk_for_test, MCP)
    assert 'id="mcp-call"' in html
    assert '<code id="mcp-tool">delete_note</code>' in html
    assert "https://mcp.internal.example.com/mcp" in html
    assert "&#34;name&#34;: &#34;q3 &lt;plan&gt;&#34;" in html or "&quot;name&quot;: &quot;q3 &lt;plan&gt;&quot;" in html
    assert "<plan>" not in html  # escaped
    earlier = html[html.index('id="mcp-earlier"'):]
    assert earlier.index("list_notes") < earlier.index("drop_database")
    assert "s-blocked" in earlier


def test_other_holds_show_no_mcp_section(app):
    assert 'id="mcp-call"' not in _page(app, app.desk_for_test, None)
