"""Two (and three) real gateway processes on one real PostgreSQL server (``--state``).

A hold taken on gateway A is approved through gateway B's API, or in a browser on B's
review UI, and the agent's call waiting on A completes. An async hold taken on a
gateway that is then killed with SIGKILL is collected on B, and the dead gateway's
wait-mode hold ends ``abandoned`` (``gateway_lost``). PostgreSQL stopped mid-run: a
request that needs approval is refused (JSON 503 ``shared_state_unavailable``), others
pass; PostgreSQL back: holds work again, with no gateway restarted.

One PostgreSQL server for the session, one database, upstream and three gateways for
this module, started together (the state's schema is created under an advisory lock, so
gateways may start at once, as behind a load balancer); the third, C, is restarted and
then killed by its own test.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from review_ui.reviewers import add_reviewer
from tests.support.gateway import GatewayProcess, free_port
from tests.support.postgres import PostgresServer
from tests.support.review import AGENT_TOKENS, PASSWORD_SUFFIX, REVIEWERS, rules_text
from tests.support.review_login import sign_in
from tests.support.upstream import UpstreamServer

REFUND = {"amount": 250, "order": "A-7"}
#: A killed gateway counts as lost after this long without a heartbeat (5 s by default).
LOST_AFTER_S = 1.5


class Node:
    """One gateway of the cluster with its own review UI."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.name = name
        self.ui_port = free_port()
        self.gateway = GatewayProcess(cluster.rules, cluster.confdir, [
            "--ui", f"127.0.0.1:{self.ui_port}", "--reviewers", str(cluster.reviewers_file),
            "--state", cluster.dsn, "--db", str(cluster.directory / f"recording-{name}.duckdb"),
        ], {"PORTCULLIS_STATE_LOST_AFTER_S": str(LOST_AFTER_S)}).start()
        self.cluster = cluster

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def api(self, reviewer: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            return session.request(method, self.ui_url + path, timeout=10,
                                   headers={"Authorization": f"Bearer {self.cluster.tokens[reviewer]}"}, **kwargs)

    def pending(self) -> list[dict[str, Any]]:
        return self.api("alice", "GET", "/api/pending").json()["pending"]

    def call(self, method: str, path: str, timeout: float = 300, **kwargs: Any) -> requests.Response:
        proxy = f"http://billing-agent:{AGENT_TOKENS['billing-agent']}@127.0.0.1:{self.gateway.port}"
        with requests.Session() as session:
            session.trust_env = False
            return session.request(method, self.cluster.upstream.url(path), proxies={"http": proxy, "https": proxy},
                                   timeout=timeout, **kwargs)


class Cluster:
    def __init__(self, directory: Path, confdir: Path, dsn: str) -> None:
        self.directory, self.confdir, self.dsn = directory, confdir, dsn
        self.reviewers_file = directory / "reviewers.yaml"
        self.tokens: dict[str, str] = {}
        for name, groups in REVIEWERS.items():
            _, token = add_reviewer(self.reviewers_file, name, groups, name + PASSWORD_SUFFIX)
            assert token is not None
            self.tokens[name] = token
        self.rules = directory / "rules.yaml"
        # Holds wait 5 minutes, their agents as long: a test's steps (a restart of C among
        # them) took over 30 s on a loaded machine and a hold it still needed had expired.
        self.rules.write_text(rules_text(hold_timeout="5m"))
        self.upstream = UpstreamServer().start()
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.nodes: list[Node] = []

    def start_nodes(self, *names: str) -> list[Node]:
        """Gateways started at the same time (each start is mostly its own imports)."""
        with ThreadPoolExecutor(max_workers=len(names)) as starting:
            futures = [starting.submit(Node, self, name) for name in names]
        self.nodes += [future.result() for future in futures if future.exception() is None]
        for future in futures:
            future.result()  # the first start that failed, if one did (the others get stopped)
        return [future.result() for future in futures]

    def agent(self, node: Node, method: str, path: str, **kwargs: Any) -> Future:
        return self.pool.submit(node.call, method, path, **kwargs)

    def received(self, path: str) -> list:
        return [r for r in self.upstream.received if r.path == path]

    def stop(self) -> None:
        for node in self.nodes:
            node.gateway.stop_soon()  # nothing reads them now: their exits are awaited by reap()
        self.upstream.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)


def wait_for(check: Any, timeout: float = 10, what: str = "condition", every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def held_on(node: Node, path: str, timeout: float = 10, call: Future | None = None) -> dict[str, Any]:
    """The pending hold of a request to ``path`` as ``node`` lists it (``call``: the
    agent's call, whose answer is shown if it came back instead of being held)."""
    def listed() -> dict[str, Any] | None:
        if call is not None and call.done():
            raise AssertionError(f"the call to {path} was answered instead of held: {call.result().text}")
        return next((h for h in node.pending() if h["url"].endswith(path)), None)

    return wait_for(listed, timeout, f"{node.name} to list the hold of {path}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, confdir: Path, postgres_dsn: str) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), confdir, postgres_dsn)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def nodes(cluster: Cluster) -> dict[str, Node]:
    return {node.name: node for node in cluster.start_nodes("a", "b", "c")}


@pytest.fixture(scope="module")
def a(nodes: dict[str, Node]) -> Node:
    return nodes["a"]


@pytest.fixture(scope="module")
def b(nodes: dict[str, Node]) -> Node:
    return nodes["b"]


@pytest.fixture(scope="module")
def c(nodes: dict[str, Node]) -> Node:
    """The gateway test_async_holds_survive... restarts and then kills: no other test uses it."""
    return nodes["c"]


def test_a_hold_on_a_approved_through_bs_api_completes_the_call_on_a(cluster, a, b):
    call = cluster.agent(a, "POST", "/v1/refunds?t=api-on-b", json=REFUND)
    hold = held_on(b, "/v1/refunds?t=api-on-b")  # B lists what A holds
    assert hold["status"] == "pending" and hold["identity"] == "billing-agent"
    assert not call.done()
    approved = b.api("bob", "POST", f"/api/flows/{hold['flow_id']}/approve", json={"comment": "via B"})
    assert approved.status_code == 200, approved.text
    response = call.result(timeout=10)
    assert response.status_code == 200 and response.json()["path"] == "/v1/refunds?t=api-on-b"
    assert response.headers["X-Portcullis-Flow-Id"] == hold["flow_id"]
    assert len(cluster.received("/v1/refunds?t=api-on-b")) == 1
    # Both gateways show the decision; A's review API has B's approval among its events.
    for node in (a, b):
        flow = wait_for(lambda node=node: (f := node.api("alice", "GET", f"/api/flows/{hold['flow_id']}").json())
                        and f["status"] == "approved" and f, what=f"{node.name} to show the decision")
        assert flow["decided_by"] == "bob"
    events = a.api("alice", "GET", f"/api/flows/{hold['flow_id']}").json()["events"]
    assert [e["kind"] for e in events].count("approved") == 1
    # A's copy of B's decision says where B's reviewer decided (a token: the API).
    assert [e["detail"].get("via") for e in events if e["kind"] == "approved"] == ["api"]


def test_a_rejection_on_b_reaches_the_agent_on_a(cluster, a, b):
    call = cluster.agent(a, "POST", "/v1/refunds?t=reject-on-b", json=REFUND)
    hold = held_on(b, "/v1/refunds?t=reject-on-b")
    assert b.api("alice", "POST", f"/api/flows/{hold['flow_id']}/reject",
                 json={"comment": "not this one"}).status_code == 200
    response = call.result(timeout=10)
    assert response.status_code == 403
    assert response.json()["error"] == "rejected_by_reviewer" and "not this one" in response.json()["reason"]
    assert cluster.received("/v1/refunds?t=reject-on-b") == []


@pytest.mark.browser
def test_approved_in_a_browser_on_bs_review_ui(cluster, a, b, browser):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(b.ui_url + "/")
        expect(page).to_have_url(re.compile(r"/login"))
        page.fill("input[name=name]", "alice")
        page.fill("input[name=password]", "alice" + PASSWORD_SUFFIX)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Pending requests")
        expect(page.locator("#live-status.on")).to_be_attached()  # B's live feed is connected
        page.evaluate("window.__notReloaded = true")
        call = cluster.agent(a, "POST", "/v1/refunds?t=browser-on-b", json=REFUND)
        hold = held_on(b, "/v1/refunds?t=browser-on-b")
        row = page.locator(f'tr[data-flow-id="{hold["flow_id"]}"]')
        expect(row).to_contain_text("Refunds over $100 need a finance lead")
        assert page.evaluate("window.__notReloaded") is True  # A's hold reached B's page live
        row.locator("a.open").click()
        expect(page.locator(".reason-big")).to_have_text("Refunds over $100 need a finance lead")
        page.fill("#comment", "approved on B")
        page.click("#approve")
        expect(page.locator("#flow-status")).to_have_text("approved")
        expect(page.locator("#decided-by")).to_have_text("alice")
    finally:
        context.close()
    response = call.result(timeout=10)
    assert response.status_code == 200 and response.json()["path"] == "/v1/refunds?t=browser-on-b"


def test_a_reviewer_session_started_on_b_is_known_to_a_and_a_logout_on_a_ends_it(cluster, a, b):
    """Sessions (and the cookie key) live in PostgreSQL: behind a load balancer, a reviewer
    signed in on one gateway is signed in on all of them, and a logout ends it everywhere."""
    cookie, csrf = sign_in(b.ui_url, "bob", "bob" + PASSWORD_SUFFIX)

    def page(node: Node) -> requests.Response:
        return requests.get(node.ui_url + "/", headers={"Cookie": cookie}, allow_redirects=False, timeout=10,
                            proxies={"http": "", "https": ""})

    assert page(a).status_code == 200 and "bob" in page(a).text
    logout = requests.post(a.ui_url + "/logout", data={"csrf_token": csrf}, headers={"Cookie": cookie},
                           allow_redirects=False, timeout=10, proxies={"http": "", "https": ""})
    assert logout.status_code == 302
    assert page(b).status_code == 302  # to the login page: the session is gone on B too


def test_async_holds_survive_a_restart_and_are_collected_on_b_after_their_gateway_was_killed(cluster, b, c):
    # A clean restart (SIGTERM): C's wait-mode hold expires (its connection closes), its
    # async hold lives on and is collected on the restarted C.
    kept = c.call("POST", "/v1/refunds?t=async-restart", json=REFUND, headers={"X-Portcullis-Wait": "async"})
    assert kept.status_code == 202, kept.text
    kept_id = kept.json()["flow_id"]
    waiting = cluster.agent(c, "POST", "/v1/refunds?t=wait-restart", json=REFUND)
    wait_hold = held_on(b, "/v1/refunds?t=wait-restart", call=waiting)
    others = cluster.agent(b, "POST", "/v1/refunds?t=bs-own", json=REFUND)
    bs_own = held_on(b, "/v1/refunds?t=bs-own")
    c.gateway.stop()
    stopped_gateway = c.gateway
    try:  # mitmproxy may close the connection before the expiry's 403 is written
        assert waiting.result(timeout=10).json()["error"] == "approval_expired"
    except requests.RequestException:
        pass
    stopped = wait_for(lambda: (f := b.api("alice", "GET", f"/api/flows/{wait_hold['flow_id']}").json())
                       and f["status"] != "pending" and f, what="B to see C's wait-mode hold closed")
    # C closed it itself while stopping (its connection closes first, or its shutdown
    # expiry comes first): never left to the survivors' gateway_lost.
    assert (stopped["status"], stopped["detail"]) in (("expired", "gateway_shutdown"),
                                                      ("abandoned", "client disconnected"))
    assert b.api("alice", "GET", f"/api/flows/{kept_id}").json()["status"] == "pending"
    assert b.api("alice", "GET", f"/api/flows/{bs_own['flow_id']}").json()["status"] == "pending"
    c.gateway = GatewayProcess(stopped_gateway.rules, stopped_gateway.confdir, stopped_gateway.extra_args,
                               stopped_gateway.env).start()  # the restart
    assert c.api("bob", "POST", f"/api/flows/{kept_id}/approve", json={}).status_code == 200
    collected = c.call("POST", "/v1/refunds?t=async-restart", json=REFUND, headers={"X-Portcullis-Approval": kept_id})
    assert collected.status_code == 200, collected.text
    assert b.api("bob", "POST", f"/api/flows/{bs_own['flow_id']}/reject", json={"comment": "not now"}).status_code == 200
    assert others.result(timeout=10).status_code == 403

    # SIGKILL: no shutdown at all. B closes the dead gateway's wait-mode hold, and its
    # async hold is approved and collected on B.
    pending = c.call("POST", "/v1/refunds?t=async-kill", json=REFUND, headers={"X-Portcullis-Wait": "async"})
    assert pending.status_code == 202, pending.text
    flow_id = pending.json()["flow_id"]
    waiting = cluster.agent(c, "POST", "/v1/refunds?t=wait-kill", json=REFUND)
    wait_hold = held_on(b, "/v1/refunds?t=wait-kill", call=waiting)
    held_on(b, "/v1/refunds?t=async-kill")
    c.gateway.stop(signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(requests.RequestException):
        waiting.result(timeout=10)  # its connection died with C
    closed = wait_for(lambda: (f := b.api("alice", "GET", f"/api/flows/{wait_hold['flow_id']}").json())
                      and f["status"] != "pending" and f, timeout=LOST_AFTER_S + 10, what="B to close C's hold")
    failover = time.monotonic() - killed
    assert (closed["status"], closed["detail"]) == ("abandoned", "gateway_lost")
    print(f"\nfailover: SIGKILLed gateway's wait-mode hold abandoned by a survivor after {failover:.2f} s "
          f"(lost after {LOST_AFTER_S} s without a heartbeat)")
    assert b.api("alice", "POST", f"/api/flows/{flow_id}/approve", json={}).status_code == 200
    other = b.call("POST", "/v1/refunds?t=async-kill", json={**REFUND, "amount": 9999},
                   headers={"X-Portcullis-Approval": flow_id})
    assert other.status_code == 403 and other.json()["error"] == "approval_mismatch"  # and nothing is used up
    collected = b.call("POST", "/v1/refunds?t=async-kill", json=REFUND, headers={"X-Portcullis-Approval": flow_id})
    assert collected.status_code == 200, collected.text
    assert collected.json()["path"] == "/v1/refunds?t=async-kill"
    again = b.call("POST", "/v1/refunds?t=async-kill", json=REFUND, headers={"X-Portcullis-Approval": flow_id})
    assert again.status_code == 409 and again.json()["error"] == "approval_already_used"
    for path in ("/v1/refunds?t=async-kill", "/v1/refunds?t=async-restart"):
        assert len(cluster.received(path)) == 1
    assert cluster.received("/v1/refunds?t=wait-kill") == cluster.received("/v1/refunds?t=wait-restart") == []


def test_postgres_down_fails_closed_then_recovers_without_a_restart(cluster, a, b, postgres: PostgresServer):
    # A hold taken before the outage survives it.
    before = cluster.agent(a, "POST", "/v1/refunds?t=before-outage", json=REFUND)
    hold = held_on(b, "/v1/refunds?t=before-outage")
    postgres.stop()
    try:
        stopped = time.monotonic()

        def refused() -> list[requests.Response]:  # a list: a 503 Response is falsy
            # Async, so that a request taken in before A noticed answers 202 at once
            # (that hold is committed once PostgreSQL is back; nothing is forwarded).
            response = a.call("POST", "/v1/refunds?t=during-outage", json=REFUND, timeout=10,
                              headers={"X-Portcullis-Wait": "async"})
            assert response.status_code in (202, 503), response.text
            return [response] if response.status_code == 503 else []

        (response,) = wait_for(refused, timeout=15, what="A to refuse holds", every=0.05)
        detected = time.monotonic() - stopped
        body = response.json()
        assert body["error"] == "shared_state_unavailable" and "PostgreSQL" in body["reason"]
        assert response.headers["X-Portcullis-Flow-Id"] == body["flow_id"]
        assert b.call("GET", "/v1/orders/A-7?t=during-outage").status_code == 200  # allowed traffic flows
        decision = b.api("bob", "POST", f"/api/flows/{hold['flow_id']}/approve", json={})
        assert decision.status_code == 503 and decision.json()["error"] == "shared_state_unavailable"
        assert not before.done()
    finally:
        postgres.start()
    restarted = time.monotonic()

    def holds_again(node: Node) -> list[requests.Response]:
        response = node.call("POST", "/v1/refunds?t=recovered", json=REFUND, timeout=10,
                             headers={"X-Portcullis-Wait": "async"})
        assert response.status_code in (202, 503), response.text
        return [response] if response.status_code == 202 else []

    wait_for(lambda: holds_again(a), timeout=20, what="A to take holds again", every=0.05)
    recovery = time.monotonic() - restarted
    # Each gateway finds PostgreSQL back on its own; under load B can be a moment behind A
    # (it refused the wait-mode hold below with a 503 once, so A had nothing to list).
    wait_for(lambda: holds_again(b), timeout=20, what="B to take holds again", every=0.05)
    call = cluster.agent(b, "POST", "/v1/refunds?t=after-outage", json=REFUND)
    after = held_on(a, "/v1/refunds?t=after-outage", timeout=20, call=call)  # B holds, A lists: NOTIFY works again
    print(f"\nPostgreSQL stop detected (holds refused) after {detected:.2f} s; "
          f"holds work again {recovery:.2f} s after PostgreSQL restarted")
    for flow in (hold, after):
        assert a.api("alice", "POST", f"/api/flows/{flow['flow_id']}/approve", json={}).status_code == 200
    assert before.result(timeout=10).status_code == 200
    assert call.result(timeout=10).status_code == 200
    assert cluster.received("/v1/refunds?t=during-outage") == []
