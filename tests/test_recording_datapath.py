"""The recording's data path (issue 18): what the event loop does per flow is cheaper,
and writes exactly what it wrote before."""

from __future__ import annotations

import json
import pickle

from mitmproxy.test import tflow

from addons.core.flowstate import FlowStates
from addons.recorder import rows
from recordings.journal import Journal


def test_a_journal_line_put_together_by_hand_is_the_line_the_json_encoder_wrote(tmp_path):
    journal = Journal(tmp_path / "rec.duckdb")
    journal.open()
    fields = {"method": "GET", "scheme": "https", "host": 'ex\u00e4mple.com\n"quoted"\\', "port": 8443,
              "path": "/p\u2028\x00", "query": None, "client_addr": "[::1]:5", "rules": ["a", "b"],
              "flag": True, "ratio": 1.5}
    journal.note_fields("received", "flow-1", 1234.5678, fields)
    journal.note({"k": "received", "id": "flow-1", "at": 1234.5678, **fields})
    by_hand, encoded = journal.files()[-1].read_bytes().splitlines()
    assert by_hand == encoded
    assert journal.entries()[0] == {"k": "received", "id": "flow-1", "at": 1234.5678, **fields}
    odd = {"value": frozenset({1}), "n": 10**30, "neg": -1}  # not JSON: str() of it, as before
    journal.note_fields("held", "flow-2", 1.0, odd)
    journal.note({"k": "held", "id": "flow-2", "at": 1.0, **odd})
    by_hand, encoded = journal.files()[-1].read_bytes().splitlines()[2:]
    assert by_hand == encoded
    journal.close(delete=True)


def test_the_flow_snapshot_is_one_picklable_tuple_and_builds_the_same_row(tmp_path):
    flow = tflow.tflow(resp=True)
    flow.request.path = "/v1/things?api_key=s3cr3t-value&x=1"
    flow.request.headers["authorization"] = "Bearer abcdefghijklmnop"
    flow.response.content = b'{"echo": "abcdefghijklmnop"}'
    state = FlowStates().of(flow)
    state.decision, state.rules, state.reason = "allowed", ["r2", "r1"], "fine"
    state.injected_headers = {"X-Api-Key"}
    state.secrets = {"injected-secret-1"}
    flow.request.headers["x-api-key"] = "injected-secret-1"
    made = rows.flow_row(flow, state, "allowed", 1 << 20, ("known-secret-9",))
    state.rules.append("later")  # the snapshot does not move with the live state
    again = pickle.loads(pickle.dumps(made, protocol=pickle.HIGHEST_PROTOCOL))
    assert isinstance(made, tuple) and again == made
    row = again()
    assert row["id"] == flow.id and row["decision"] == "allowed" and row["rules"] == ["r2", "r1"]
    assert row["path"] == "/v1/things" and row["query"] == "api_key=[redacted]&x=1"
    headers = json.loads(row["request_headers"])
    assert headers["authorization"] == "[redacted]" and headers["x-api-key"] == "[redacted]"
    assert "abcdefghijklmnop" not in row["response_body"]  # a redacted header's value, echoed
    assert row["started_at"] == int(flow.request.timestamp_start * 1_000_000)
    assert row["status_code"] == 200 and row["client_addr"] == "127.0.0.1:22"
