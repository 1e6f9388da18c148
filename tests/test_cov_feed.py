"""In-process tests of recordings/feed.py against a fake sink end of the pipe (issue 13).

The real sink runs as a subprocess (tests of the recorder cover that); here a thread
plays the sink on a real socket pair, so the feed's protocol, barrier answers and its
failure paths (sink refuses, sink dies, an event that will not pickle) run in-process.
"""

from __future__ import annotations

import pickle
import socket
import threading
from functools import partial
from multiprocessing.connection import Connection

import pytest

from recordings.feed import Feed, _Built, _portable
from recordings.store import StoreError


class FakeProcess:
    """Enough of subprocess.Popen for Feed: poll / wait / kill."""

    def __init__(self) -> None:
        self.killed = False

    def poll(self):
        return 0 if self.killed else None

    def wait(self, timeout=None):
        return 0

    def kill(self) -> None:
        self.killed = True


def _pair() -> tuple[Connection, Connection]:
    a, b = socket.socketpair()
    return Connection(a.detach()), Connection(b.detach())


def _event(seq: int, kind: str = "k") -> dict:
    return {"kind": kind, "seq": seq}


class FakeSink(threading.Thread):
    """Answers config with ready, records items, answers barriers, stops on stop."""

    def __init__(self, conn: Connection, barrier_ok: bool = True) -> None:
        super().__init__(daemon=True)
        self.conn, self.barrier_ok = conn, barrier_ok
        self.items: list = []
        self.configures: list = []
        self.config = None

    def run(self) -> None:
        kind, self.config = pickle.loads(self.conn.recv_bytes())
        assert kind == "config"
        self.conn.send_bytes(pickle.dumps(("ready", {"path": "x"})))
        while True:
            message = pickle.loads(self.conn.recv_bytes())
            if message[0] == "items":
                for item in message[1]:
                    self.items.append(item)
                    if isinstance(item, tuple) and item[0] == "b":
                        self.conn.send_bytes(pickle.dumps(("barrier", item[1], self.barrier_ok)))
                self.conn.send_bytes(pickle.dumps(("status", {
                    "failure": None, "written": len(self.items), "dropped": 0, "cpu_seconds": 0.5})))
            elif message[0] == "configure":
                self.configures.append(message[1])
            elif message[0] == "stop":
                self.conn.send_bytes(pickle.dumps(("stopped", 0)))
                self.conn.close()
                return


def _started(barrier_ok: bool = True, **config) -> tuple[Feed, FakeSink, FakeProcess]:
    ours, theirs = _pair()
    sink = FakeSink(theirs, barrier_ok)
    sink.start()
    feed = Feed({"path": "x", **config}, batch_rows=3, batch_seconds=0.01)
    process = FakeProcess()
    feed.start((process, ours))
    return feed, sink, process


def _wait_barrier(feed: Feed) -> bool:
    done = threading.Event()
    result: list[bool] = []
    feed.barrier(lambda ok: (result.append(ok), done.set()))
    assert done.wait(5), "barrier never answered"
    return result[0]


def test_items_barrier_configure_and_stop_round_trip() -> None:
    feed, sink, process = _started(retain_days=7)
    assert feed.ready == {"path": "x"} and sink.config["retain_days"] == 7
    assert feed.retain_days == 7
    feed.put_flow({"id": "f1"})
    feed.put_event(partial(_event, kind="kw"))  # keywords: sent as the partial itself
    feed.put_event(partial(_event))  # no keywords: sent as (func, args)
    feed.put_event(_event)
    feed.retain_days = 3
    assert _wait_barrier(feed) is True
    assert feed.retain_days == 3 and sink.configures == [{"retain_days": 3}]
    assert feed.healthy and feed.written >= 4 and feed.cpu_seconds == 0.5
    kinds = [item[0] if isinstance(item, tuple) else "flow" for item in sink.items]
    assert kinds[:4] == ["flow", "e", "p", "e"]
    assert feed.stop(timeout=5) == 0
    assert not process.killed


def test_failed_barrier_is_answered_false() -> None:
    feed, sink, _ = _started(barrier_ok=False)
    assert _wait_barrier(feed) is False
    feed.stop(timeout=5)


def test_barrier_callback_error_does_not_stop_the_feed(caplog) -> None:
    feed, sink, _ = _started()

    def broken(ok: bool) -> None:
        raise RuntimeError("waiter bug")

    feed.barrier(broken)
    assert _wait_barrier(feed) is True
    assert "barrier callback failed" in caplog.text
    feed.stop(timeout=5)


def test_unpicklable_event_is_built_in_the_gateway() -> None:
    feed, sink, _ = _started()
    lock = threading.Lock()  # does not pickle
    feed.put_event(lambda seq: {"kind": "lambda", "seq": seq})
    feed.put_event(partial(lambda x, seq: {"kind": "p", "seq": seq}, lock))  # unpicklable func+arg
    feed.put_flow({"id": "ok"})
    assert _wait_barrier(feed)
    built = [item[1] for item in sink.items if isinstance(item, tuple) and item[0] == "e"]
    assert len(built) == 2 and all(isinstance(b, _Built) for b in built)
    assert built[0](5) == {"kind": "lambda", "seq": 5}
    assert {"id": "ok"} in sink.items
    feed.stop(timeout=5)


def test_portable_reraises_for_other_unpicklable_items() -> None:
    with pytest.raises(TypeError):
        _portable(("x", threading.Lock()))
    assert _portable(("e", _event)) == ("e", _event)


def test_sink_death_fails_pending_barriers_and_marks_unhealthy(caplog) -> None:
    ours, theirs = _pair()
    feed = Feed({"path": "x"}, batch_seconds=0.01)

    def sink() -> None:
        pickle.loads(theirs.recv_bytes())
        theirs.send_bytes(pickle.dumps(("ready", {})))
        theirs.recv_bytes()  # the first batch, then die without answering
        theirs.close()

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    feed.start((FakeProcess(), ours))
    assert _wait_barrier(feed) is False
    assert not feed.healthy and "exited" in feed.failure
    assert "recording failed" in caplog.text
    thread.join(5)


def test_sink_error_at_start_raises_and_kills() -> None:
    ours, theirs = _pair()

    def sink() -> None:
        pickle.loads(theirs.recv_bytes())
        theirs.send_bytes(pickle.dumps(("error", "disk full")))

    threading.Thread(target=sink, daemon=True).start()
    process = FakeProcess()
    with pytest.raises(StoreError, match="disk full"):
        Feed({"path": "x"}).start((process, ours))
    assert process.killed


def test_sink_exit_while_opening_raises() -> None:
    ours, theirs = _pair()

    def sink() -> None:
        theirs.recv_bytes()
        theirs.close()

    threading.Thread(target=sink, daemon=True).start()
    process = FakeProcess()
    with pytest.raises(StoreError, match="while opening"):
        Feed({"path": "x"}).start((process, ours))
    assert process.killed


def test_sink_gone_before_config_raises() -> None:
    ours, theirs = _pair()
    theirs.close()
    process = FakeProcess()
    with pytest.raises(StoreError, match="before it was configured"):
        Feed({"path": "x"}).start((process, ours))
    assert process.killed


def test_unstarted_feed_stop_and_failed_barrier() -> None:
    feed = Feed({"path": "x"})
    assert feed.stop() == 0
    feed.failure = "broken"
    answers: list[bool] = []
    feed.barrier(answers.append)
    assert answers == [False]
    feed._send_bytes(b"ignored without a connection")  # no connection: a no-op
