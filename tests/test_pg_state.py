"""The shared hold book on a real PostgreSQL server, in process: two "gateways" (a book,
a PgHoldStore and a ClusterDesk each, on their own event loop thread) on one database.

What one gateway holds, the other lists and decides; the holding one learns of the
decision (NOTIFY, or polling when notifications are missed); two decisions at once end
with one winner; grants made on one are used on the other; a silent gateway's wait-mode
holds end ``abandoned`` (``gateway_lost``) while its async holds live on; the schema is
versioned; reviewer sessions and login throttling live in PostgreSQL too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from addons.core.events import Event, EventBus
from addons.core.loopbridge import LoopBridge
from addons.holds.book import Actor, DecisionError, Grant, HoldBook, HoldRecord
from addons.holds.pgcodec import decode, encode
from addons.holds.pgdesk import ClusterDesk
from addons.holds.pgschema import (
    SCHEMA_VERSION,
    Pool,
    SchemaTooNew,
    connect,
    migrate,
    shared_secret,
)
from addons.holds.pgstore import PgHoldStore
from review_ui.auth import pg_login_limits
from review_ui.session_store import PgSessionStore
from tests.support.hold_desk import hold_record
from tests.support.postgres import PostgresServer

FIN1 = Actor("fin1", frozenset({"finance-leads"}))
FIN2 = Actor("fin2", frozenset({"finance-leads"}))


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Gateway:
    """A book over a PgHoldStore on its own loop thread, as one gateway process has."""

    store: PgHoldStore
    loop: asyncio.AbstractEventLoop
    bridge: LoopBridge
    book: HoldBook
    desk: ClusterDesk
    events: list[Event] = field(default_factory=list)

    def on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.bridge.call(fn, *args)

    def kinds(self, flow_id: str) -> list[str]:
        return [e.kind for e in list(self.events) if e.flow_id == flow_id]


@pytest.fixture
def cluster(postgres_dsn: str) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(**store_args: Any) -> Gateway:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        bridge = LoopBridge()
        bridge.attach(loop)
        store = PgHoldStore(**store_args)
        store.open(postgres_dsn)
        bus = EventBus()
        book = HoldBook(store, bus)
        gateway = Gateway(store, loop, bridge, book, ClusterDesk(book, bridge, store))
        bus.subscribe(gateway.events.append)
        store.start(loop, bus)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.store.close()
        gateway.loop.call_soon_threadsafe(gateway.loop.stop)


def hold_on(gateway: Gateway, flow_id: str, mode: str = "wait", **spec: Any) -> HoldRecord:
    record = hold_record(flow_id, time.time(), **spec)
    record.mode = mode
    return gateway.on_loop(gateway.book.hold, record)


def committed(dsn: str, flow_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT decision, gateway, record->>'detail', collected FROM portcullis_holds "
                            "WHERE id = %s", (flow_id,)).fetchone()


# --- one queue, any gateway decides ---------------------------------------------------


def test_a_hold_on_one_gateway_is_listed_and_decided_on_another(cluster, postgres_dsn):
    a, b = cluster(), cluster()
    hold_on(a, "f-cross")
    wait_for(lambda: any(h["flow_id"] == "f-cross" for h in b.desk.queue()), what="B lists A's hold")
    assert b.desk.get("f-cross")["body_available"]  # the exact bytes are offered on B too
    summary = b.desk.approve("f-cross", FIN1, "ok")
    assert summary["status"] == "approved" and summary["decided_by"] == "fin1"
    # A (which holds the connection) is told: its bus carries the decision, marked as made elsewhere.
    wait_for(lambda: "approved" in a.kinds("f-cross"), what="A hears of B's approval")
    event = next(e for e in a.events if e.flow_id == "f-cross" and e.kind == "approved")
    assert event.actor == "fin1" and event.detail["decided_elsewhere"] is True
    assert a.on_loop(a.book.get, "f-cross").decision == "approved"
    assert committed(postgres_dsn, "f-cross")[:2] == ("approved", a.store.gateway_id)
    # B's own audit trail has it once, and B's review page shows A's events.
    assert b.kinds("f-cross") == ["approved"]
    wait_for(lambda: "held" in [e["kind"] for e in b.desk.events_of("f-cross")], what="A's events on B")


def test_the_holder_learns_by_polling_when_it_missed_the_notification(cluster, postgres_dsn):
    a, b = cluster(poll_s=0.3), cluster()
    hold_on(a, "f-poll")
    wait_for(lambda: b.on_loop(b.book.find, "f-poll") is not None, what="B mirrors the hold")
    # Decide behind every gateway's back: a plain UPDATE with no NOTIFY.
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("UPDATE portcullis_holds SET decision = 'rejected', writer = 'someone', "
                     "record = record || '{\"decision\": \"rejected\", \"decided_by\": \"ops\"}'::jsonb, "
                     "rev = nextval('portcullis_rev') WHERE id = 'f-poll'")
    wait_for(lambda: "rejected" in a.kinds("f-poll"), timeout=3, what="A finds the decision by polling")


def test_two_reviewers_on_two_gateways_at_once_one_decision_wins(cluster):
    a, b = cluster(), cluster()
    for n in range(5):
        hold_on(a, f"f-race-{n}")
    wait_for(lambda: len(b.desk.queue()) >= 5, what="B lists the holds")
    outcomes: list[str] = []

    def decide(desk: ClusterDesk, how: str, flow_id: str) -> None:
        try:
            (desk.approve(flow_id, FIN1) if how == "approve" else desk.reject(flow_id, FIN2, "no"))
            outcomes.append(how)
        except DecisionError as exc:
            outcomes.append(exc.code)

    for n in range(5):
        threads = [threading.Thread(target=decide, args=(a.desk, "approve", f"f-race-{n}")),
                   threading.Thread(target=decide, args=(b.desk, "reject", f"f-race-{n}"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(outcomes) == 10 and outcomes.count("already_decided") == 5
    for n in range(5):
        final = wait_for(lambda n=n: b.on_loop(b.book.get, f"f-race-{n}").decision, what="B's mirror")
        assert a.on_loop(a.book.get, f"f-race-{n}").decision == final


def test_n_approvals_may_come_from_different_gateways(cluster):
    a, b = cluster(), cluster()
    hold_on(a, "f-two", approvals_required=2)
    wait_for(lambda: b.on_loop(b.book.find, "f-two") is not None, what="B mirrors the hold")
    assert a.desk.approve("f-two", FIN1)["status"] == "pending"
    with pytest.raises(DecisionError) as again:
        b.desk.approve("f-two", FIN1)
    assert again.value.code == "already_approved"  # the vote on A counts on B
    assert b.desk.approve("f-two", FIN2)["status"] == "approved"
    wait_for(lambda: "approved" in a.kinds("f-two"), what="A hears the second vote decided it")


def test_a_grant_made_on_one_gateway_lets_the_identical_request_pass_on_another(cluster):
    a, b = cluster(), cluster()
    held = hold_on(a, "f-grant", grant=600.0)
    wait_for(lambda: b.on_loop(b.book.find, "f-grant") is not None, what="B mirrors the hold")
    b.desk.approve("f-grant", FIN1, grant_s=300.0)
    grant = wait_for(lambda: a.on_loop(a.book.use_grant, "f-next", held.identity, held.binding, held.verdict),
                     what="A uses B's grant")
    assert grant.created_by == "fin1" and grant.uses == 1


def test_an_approval_is_collected_once_even_from_another_gateway(cluster, postgres_dsn):
    a, b = cluster(), cluster()
    held = hold_on(a, "f-async", mode="async")
    wait_for(lambda: b.on_loop(b.book.find, "f-async") is not None, what="B mirrors the hold")
    a.desk.approve("f-async", FIN1)
    wait_for(lambda: b.on_loop(b.book.get, "f-async").decision == "approved", what="B sees the approval")
    first = b.on_loop(b.book.collect, "c1", "f-async", held.identity, held.binding, held.verdict)
    assert first.outcome == "approved"
    wait_for(lambda: committed(postgres_dsn, "f-async")[3] is True, what="the collection committed")
    wait_for(lambda: a.on_loop(a.book.get, "f-async").collected, what="A sees it collected")
    second = a.on_loop(a.book.collect, "c2", "f-async", held.identity, held.binding, held.verdict)
    assert second.outcome == "used"


# --- gateways that die, stop or restart -------------------------------------------------


def test_a_lost_gateways_wait_holds_are_abandoned_and_its_async_holds_live_on(cluster, postgres_dsn):
    a = cluster(lost_after_s=1.0)
    b = cluster(lost_after_s=1.0)
    hold_on(a, "f-lost-wait")
    hold_on(a, "f-lost-async", mode="async")
    wait_for(lambda: b.on_loop(b.book.find, "f-lost-async") is not None, what="B mirrors A's holds")
    a.store._stopping.set()  # A's heartbeat stops, as when the process is killed
    started = time.monotonic()
    wait_for(lambda: (committed(postgres_dsn, "f-lost-wait") or ("",))[0] == "abandoned", timeout=10,
             what="B abandons A's wait-mode hold")
    failover = time.monotonic() - started
    assert committed(postgres_dsn, "f-lost-wait")[2] == "gateway_lost"
    assert committed(postgres_dsn, "f-lost-async")[0] is None  # collectable later, anywhere
    wait_for(lambda: "abandoned" in b.kinds("f-lost-wait"), what="B records the abandonment")
    assert b.on_loop(b.book.get, "f-lost-wait").detail == "gateway_lost"
    print(f"failover: a silent gateway's wait-mode hold abandoned after {failover:.2f} s (lost_after 1 s)")


def test_a_stopping_gateway_expires_only_its_own_wait_mode_holds(cluster, postgres_dsn):
    a, b = cluster(), cluster()
    hold_on(a, "f-mine-wait")
    hold_on(a, "f-mine-async", mode="async")
    hold_on(b, "f-theirs")
    wait_for(lambda: a.on_loop(a.book.find, "f-theirs") is not None, what="A mirrors B's hold")
    a.store.closing = True  # what the addon's done hook does before the approvals addon expires all
    a.on_loop(a.book.expire_all, "gateway_shutdown")
    a.store.close()
    assert committed(postgres_dsn, "f-mine-wait")[0] == "expired"
    assert committed(postgres_dsn, "f-mine-async")[0] is None
    assert committed(postgres_dsn, "f-theirs")[0] is None
    # A gateway started later (a restart) loads the cluster's pending holds.
    c = cluster()
    assert c.on_loop(c.book.find, "f-mine-async").decision is None


# --- plain data, schema, sessions ------------------------------------------------------


def test_records_round_trip_field_by_field_and_new_fields_flow_through():
    record = hold_record("f-codec", 1000.0, approvals_required=2)
    record.raw = b"\x00\xffbytes"
    assert decode(HoldRecord, encode(record)) == record
    stored = encode(record)
    del stored["collected"]  # written before the field existed: its default
    stored["a_field_from_the_future"] = 1  # written by a newer gateway: ignored
    assert decode(HoldRecord, stored).collected is False
    grant = Grant("g1", "f", "agent", record.binding, record.verdict, "refunds", "fin1", 1.0, 2.0, 3)
    assert decode(Grant, encode(grant)) == grant


def test_the_schema_is_versioned_and_a_newer_one_is_refused(postgres: PostgresServer):
    dsn = postgres.new_database("schema")
    with connect(dsn, autocommit=True) as conn:
        assert migrate(conn) == SCHEMA_VERSION
        assert migrate(conn) == SCHEMA_VERSION  # idempotent
        conn.execute("INSERT INTO portcullis_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        with pytest.raises(SchemaTooNew):
            migrate(conn)


def test_reviewer_sessions_and_login_throttling_are_shared(postgres_dsn):
    with connect(postgres_dsn, autocommit=True) as conn:
        migrate(conn)
    one, two = Pool(postgres_dsn), Pool(postgres_dsn)
    session_id = PgSessionStore(one).create("fin1", "cred")
    record = PgSessionStore(two).get(session_id)
    assert record is not None and record.reviewer == "fin1" and record.credential == "cred"
    PgSessionStore(two).delete(session_id)
    assert PgSessionStore(one).get(session_id) is None  # logged out on every gateway
    idle = PgSessionStore(one, idle=0.5)
    quick = idle.create("fin2")
    time.sleep(0.6)
    assert idle.get(quick) is None
    pair_one, _ = pg_login_limits(one)
    pair_two, _ = pg_login_limits(two)
    for _ in range(5):
        assert not pair_two.blocked("fin1\x1f127.0.0.1")
        pair_one.fail("fin1\x1f127.0.0.1")
    assert pair_two.blocked("fin1\x1f127.0.0.1") and not pair_two.blocked("fin2\x1f127.0.0.1")
    pair_two.clear("fin1\x1f127.0.0.1")
    assert not pair_one.blocked("fin1\x1f127.0.0.1")
    assert shared_secret(one, "k") == shared_secret(two, "k") and len(shared_secret(one, "k")) == 32


def test_the_live_feed_on_one_gateway_shows_the_other_gateways_holds(cluster):
    a, b = cluster(), cluster()
    seen: list[tuple[str, str | None]] = []
    unwatch = b.desk.watch(lambda kind, payload: seen.append((kind, payload.get("flow_id"))))
    try:
        hold_on(a, "f-feed")
        wait_for(lambda: ("held", "f-feed") in seen, what="B's feed to show A's hold")
        a.desk.reject("f-feed", FIN1, "no")  # decided on A, about A's hold: B only reads it
        wait_for(lambda: ("decided", "f-feed") in seen, what="B's feed to show the decision")
        assert "rejected" not in b.kinds("f-feed")  # not on B's main bus: B records and notifies nothing
    finally:
        unwatch()


def test_a_gateway_started_later_loads_the_holds_and_their_events_once(cluster):
    a = cluster()
    hold_on(a, "f-late")
    a.desk.approve("f-late", FIN1, "before B started")
    wait_for(lambda: "approved" in a.kinds("f-late"), what="A's decision")
    b = cluster()
    time.sleep(3 * b.store.poll_s)  # a few polls over the same rows
    kinds = [e["kind"] for e in b.desk.events_of("f-late")]
    assert kinds.count("held") == 1 and kinds.count("approved") == 1, kinds
    assert b.desk.find("f-late")["status"] == "approved"


def test_ended_state_is_pruned_after_the_retention(cluster, postgres_dsn):
    a = cluster()
    hold_on(a, "f-old")
    hold_on(a, "f-open")
    a.desk.reject("f-old", FIN1, "no")
    a.store.flush()
    with connect(postgres_dsn, autocommit=True) as conn:
        PgHoldStore._prune(conn, retention_s=-60)  # everything ended counts as old
        left = {r[0] for r in conn.execute("SELECT id FROM portcullis_holds WHERE id IN ('f-old', 'f-open')")}
        events = conn.execute("SELECT count(*) FROM portcullis_hold_events WHERE hold_id = 'f-old'").fetchone()
    assert left == {"f-open"} and events == (0,)


def test_a_write_that_loses_to_a_decision_takes_it_and_wakes_the_holder(cluster, postgres_dsn):
    a, b = cluster(), cluster()
    hold_on(a, "f-lose", escalate_after=60.0, escalate_to=frozenset({"security-oncall"}))
    wait_for(lambda: b.on_loop(b.book.find, "f-lose") is not None, what="B mirrors the hold")
    a.store._stopping.set()  # A's listener stops: it will not hear of B's decision
    a.store._threads[1].join(5)
    b.desk.approve("f-lose", FIN1)
    assert a.on_loop(a.book.escalate, "f-lose")  # A still sees it pending; its write loses
    wait_for(lambda: "approved" in a.kinds("f-lose"), what="A to take PostgreSQL's decision and announce it")
    assert committed(postgres_dsn, "f-lose")[0] == "approved"


def test_without_a_dsn_the_store_is_the_memory_store_and_keeps_nothing_else():
    store = PgHoldStore(history_max=5)
    book = HoldBook(store, EventBus())
    for n in range(50):
        book.hold(hold_record(f"m-{n}", time.time()))
        book.reject(f"m-{n}", FIN1, "no")
    assert not store.shared and store.healthy and len(store._holds) == 5
    assert store._collected == {} and store._owner == {} and store._seen == {}
    assert store._queue.empty()


def test_two_gateways_collecting_one_approval_at_once_forward_it_once(cluster, postgres_dsn):
    a, b = cluster(), cluster()
    held = hold_on(a, "f-claim", mode="async")
    wait_for(lambda: b.on_loop(b.book.find, "f-claim") is not None, what="B mirrors the hold")
    binding, verdict = encode(held.binding), encode(held.verdict)
    assert b.store.claim_collection("f-claim", held.identity, binding, verdict)[0] is False  # pending
    a.desk.approve("f-claim", FIN1)
    # A different request, or another identity, claims nothing (and burns nothing).
    other = encode(dataclasses.replace(held.binding, body_sha256="ef" * 32))
    assert a.store.claim_collection("f-claim", held.identity, other, verdict)[0] is False
    assert a.store.claim_collection("f-claim", "someone-else", binding, verdict)[0] is False
    results: list[tuple[Gateway, bool, Any]] = []
    threads = [threading.Thread(target=lambda g=g: results.append(
        (g, *g.store.claim_collection("f-claim", held.identity, binding, verdict)))) for g in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed for _, claimed, _ in results) == [False, False, False, True]
    # What each gateway's guard then does before its approvals addon collects:
    outcomes = []
    for gateway, claimed, row in results:
        gateway.on_loop(gateway.store.take_claim, claimed, row)
        outcomes.append(gateway.on_loop(gateway.book.collect, "c", "f-claim", held.identity, held.binding,
                                        held.verdict).outcome)
    assert sorted(outcomes) == ["approved", "used", "used", "used"]
    for gateway in (a, b):
        gateway.store.flush()
    assert committed(postgres_dsn, "f-claim")[3] is True


def test_a_dropped_writer_connection_is_replaced_without_refusing_holds(cluster, postgres_dsn, caplog):
    """PostgreSQL restarted while this gateway had nothing to write: the writer's idle
    connection is dead. The next hold's commit takes a new connection at once instead of
    marking the state unavailable, which refused the following wait-mode hold with a 503
    (tests/test_cluster.py, under load)."""
    a = cluster()
    hold_on(a, "f-before")
    a.store.flush()
    with connect(postgres_dsn, autocommit=True) as conn:  # what a restart does to it
        # The writer's session, by the name it gives itself. (Picked as "the one whose last
        # statement was COMMIT" this once found two: the sync thread's sweep commits too.)
        ended = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE application_name = %s", (f"portcullis writer {a.store.gateway_id}",)).fetchone()
    assert ended == (1,)
    with caplog.at_level("WARNING", "portcullis.state"):
        hold_on(a, "f-after")
        a.store.flush()
    assert committed(postgres_dsn, "f-after") is not None
    assert "cannot commit" not in caplog.text and a.store.healthy


def test_after_a_postgresql_outage_nobody_is_judged_lost_by_their_stale_heartbeat(cluster, postgres_dsn):
    """While PostgreSQL was down nobody could heartbeat. The first gateway back must not
    take everyone else's old heartbeat for a death: it judges only after being connected
    for lost_after itself, by which time the living have heartbeated again."""
    a = cluster(lost_after_s=3.0)
    b = cluster(lost_after_s=3.0)
    hold_on(a, "f-outage-wait")
    wait_for(lambda: b.on_loop(b.book.find, "f-outage-wait") is not None, what="B mirrors A's hold")
    with connect(postgres_dsn, autocommit=True) as conn:  # a long outage, then a restart
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        # B is back first: for 1.5 s (half of lost_after) A's heartbeat is still the one
        # from before the outage.
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            conn.execute("UPDATE portcullis_gateways SET heartbeat_at = now() - interval '1 hour' "
                         "WHERE id = %s", (a.store.gateway_id,))
            time.sleep(0.02)
    time.sleep(3.0)  # A heartbeats again; B sweeps every 0.5 s, past its lost_after too
    assert committed(postgres_dsn, "f-outage-wait")[0] is None  # A lives: its hold stays pending
    with connect(postgres_dsn, autocommit=True) as conn:
        states = dict(conn.execute("SELECT id, state FROM portcullis_gateways WHERE id IN (%s, %s)",
                                   (a.store.gateway_id, b.store.gateway_id)).fetchall())
    assert states == {a.store.gateway_id: "up", b.store.gateway_id: "up"}


def test_a_decision_on_another_gateway_waits_briefly_for_a_hold_not_yet_committed(cluster):
    """Behind a load balancer the reviewer's list can come from the holder (its mirror
    shows its own holds at once) and the decision reach another gateway before the
    holder's writer committed the hold: that gateway waits for the row, briefly."""
    a, b = cluster(), cluster()
    outcome: dict[str, Any] = {}

    def decide() -> None:
        try:
            outcome["summary"] = b.desk.approve("f-late", FIN1, "ok")
        except DecisionError as exc:
            outcome["refused"] = (exc.status, exc.code)

    reviewer = threading.Thread(target=decide)
    reviewer.start()
    time.sleep(0.3)  # the decision is under way before the hold exists in PostgreSQL
    hold_on(a, "f-late")
    reviewer.join(10)
    assert outcome.get("summary", {}).get("status") == "approved", outcome
    with pytest.raises(DecisionError) as unknown:
        b.desk.approve("f-never", FIN1, "ok")
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_flow")
