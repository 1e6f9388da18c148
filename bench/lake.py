"""Audit-lake benchmarks (issue 18): python -m bench.lake [--flows N] [--requests N] [--postgres]

1. An analyst's queries over a lake of 1,000,000 flows (4 events each, the synthetic rows
   of bench/recording.py): the rows go in through the recorder's own Store.insert in
   batches, one maintenance round merges the files, then a separate plain DuckDB
   connection runs the analyst's one ATTACH (recordings.lake.Lake.attach_statement)
   and every example query of docs/recording.md. Target: each < 1 s.
   The catalog is a local lake's SQLite file, or PostgreSQL with --postgres.
2. Gateways A and B (real processes) on one lake (catalog in a temporary PostgreSQL,
   data in a directory) take --requests requests each from 8 clients while an analyst's
   separate DuckDB process counts the rows every 50 ms: every flow exactly once, the
   analyst's view never shows a flow twice. Needs PostgreSQL's binaries (Debian's
   postgresql); skipped without them.

Numbers are printed and written to bench/results/lake.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import duckdb

from bench.recording import _synthetic, doc_queries
from recordings import extensions
from recordings.lake import Lake
from recordings.maintenance import Maintenance
from recordings.store import Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "lake.json"


def _postgres(root: Path):  # -> PostgresServer | None
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        return None
    return PostgresServer(bindir, root).init().start()


def million(total: int, use_postgres: bool, batch: int = 50_000) -> dict:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        server = _postgres(Path(tempfile.mkdtemp(prefix="portcullis-pg-"))) if use_postgres else None
        try:
            lake = Lake.parse(server.new_database(), f"{tmp}/data") if server else Lake.parse(f"{tmp}/lake")
            store = Store(Path(tmp) / "bench.duckdb", lake=lake)
            cur = store.cursor()
            insert_s, seq, start = 0.0, 1, time.time() - 90 * 86_400
            for offset in range(0, total, batch):
                flows, events = _synthetic(min(batch, total - offset), start, 90, rng)
                for event in events:
                    event["seq"] = seq
                    seq += 1
                began = time.perf_counter()
                store.insert(cur, flows, events)
                insert_s += time.perf_counter() - began
            began = time.perf_counter()
            Maintenance(store, 1).run(cur, keep_s=0)
            maintenance_s = time.perf_counter() - began
            cur.close()
            store.close()
            files = sum(len(f) for _, _, f in os.walk(lake.data))
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(lake.data) for f in fs)
            # The analyst: a plain DuckDB and the one statement.
            ext = extensions.install(Path(tmp) / "ext", lake.extensions)
            analyst = duckdb.connect(config={"extension_directory": str(ext), "threads": "2"})
            analyst.execute(lake.attach_statement())
            analyst.execute("USE rec")
            timings = {}
            for title, sql in doc_queries():
                runs = []
                for _ in range(3):
                    began = time.perf_counter()
                    analyst.execute(sql).fetchall()
                    runs.append(time.perf_counter() - began)
                timings[title] = round(min(runs) * 1000, 1)
            analyst.close()
        finally:
            if server is not None:
                server.stop("immediate")
    return {"catalog": "postgresql" if use_postgres else "sqlite", "flows": total, "events": total * 4,
            "insert_rows_per_s": round(total * 5 / insert_s), "maintenance_s": round(maintenance_s, 2),
            "data_files": files, "data_mib": round(size / 2**20, 1), "query_ms": timings,
            "all_under_1s": all(ms < 1000 for ms in timings.values())}


def gateways(per_gateway: int, clients: int = 8) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.support.gateway import GatewayProcess
    from tests.support.recording_reader import (
        NO_DELETES,
        lake_reader,
        proxied_session,
        start_analyst,
    )
    from tests.support.upstream import UpstreamServer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = _postgres(Path(tempfile.mkdtemp(prefix="portcullis-pg-")))
        if server is None:
            return {"skipped": "no PostgreSQL binaries"}
        upstream = UpstreamServer().start()
        started: list[GatewayProcess] = []
        try:
            lake = Lake.parse(server.new_database(), str(work / "data"))
            rules = work / "rules.yaml"
            rules.write_text(textwrap.dedent(NO_DELETES))
            (work / "conf").mkdir()
            for name in ("a", "b"):
                started.append(GatewayProcess(rules, work / "conf", [
                    "--lake", lake.catalog, "--lake-data", lake.data, "--db", str(work / f"{name}.duckdb"),
                    "--ui", "off"]).start())
            tag = f"bench-{uuid.uuid4().hex[:8]}"
            total = 2 * per_gateway
            # An analyst's own DuckDB process counts the rows every 50 ms meanwhile.
            analyst = start_analyst(lake.attach_statement(), f"{tag}%", total, seconds=600,
                                    extensions=extensions.install(work / "ext", lake.extensions))
            sent: list[str] = []
            errors: list[str] = []

            def agent(gateway: GatewayProcess, count: int, session: str) -> None:
                with proxied_session(gateway) as http:
                    for index in range(count):
                        response = http.get(upstream.url(f"/bench/{index}"), timeout=60,
                                            headers={"X-Portcullis-Session": session})
                        if response.status_code != 200:
                            errors.append(response.text[:200])
                        sent.append(response.headers.get("X-Portcullis-Flow-Id", ""))

            threads = [threading.Thread(target=agent, args=(gw, per_gateway // (clients // 2), f"{tag}-{name}"))
                       for gw, name in zip(started, "ab", strict=True) for _ in range(clients // 2)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - began
            out, err = analyst.communicate(timeout=900)
            seen = json.loads(out.strip().splitlines()[-1])["samples"] if out.strip() else []
            samples = [(count, distinct, round(ms, 1)) for _, count, distinct, ms in seen]
            with lake_reader(lake, work / "ext") as check:
                recorded = dict(check.execute("SELECT id, count(*) FROM flows WHERE session_id LIKE ? GROUP BY id",
                                              [f"{tag}%"]).fetchall())
            logs = [line for gw in started for line in gw.lines
                    if "rror" in line or "fail" in line or "Traceback" in line][:20]
        finally:
            for gw in started:
                gw.stop()
            upstream.stop()
            server.stop("immediate")
    return {"requests": total, "clients": clients, "seconds": round(elapsed, 1),
            "req_per_s": round(total / elapsed, 1), "errors": len(errors),
            "flows_recorded": sum(recorded.values()), "distinct_flows": len(recorded),
            "every_flow_exactly_once": set(recorded) == set(sent) and all(n == 1 for n in recorded.values()),
            "analyst_samples": len(samples),
            "analyst_never_saw_a_duplicate": all(c == d for c, d, _ in samples),
            "analyst_final_count": samples[-1][0] if samples else None,
            "analyst_query_ms_max": max((ms for _, _, ms in samples), default=None),
            "analyst_error": err.strip()[-300:] or None, "error_samples": errors[:3], "gateway_log": logs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000, help="per gateway")
    parser.add_argument("--postgres", action="store_true", help="part 1's catalog in PostgreSQL")
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--skip-gateways", action="store_true")
    args = parser.parse_args(argv)
    report: dict = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    report["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not args.skip_million:
        m = report[f"million_{'postgresql' if args.postgres else 'sqlite'}"] = million(args.flows, args.postgres)
        print(f"{m['flows']} flows + {m['events']} events in a lake ({m['catalog']} catalog): "
              f"insert {m['insert_rows_per_s']} rows/s, maintenance {m['maintenance_s']} s, "
              f"{m['data_files']} files, {m['data_mib']} MiB", flush=True)
        for title, ms in m["query_ms"].items():
            print(f"  {ms:8.1f} ms  {title}")
    if not args.skip_gateways:
        g = report["two_gateways"] = gateways(args.requests)
        print(f"two gateways, one lake: {json.dumps(g)}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
