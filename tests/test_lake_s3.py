"""What of S3 can be checked here without S3 (docs/deploy-lake.md, "S3 settings"; issue 18).

No S3 (nor MinIO) is reachable from these tests, so nothing here reads or writes a
bucket. Checked instead: an ``s3://`` --lake-data is parsed as the docs say, the httpfs
extension is what such a lake loads (linked from its wheel like the others, and a
missing wheel fails closed naming the package), and the secret the gateway creates
takes exactly the documented environment variables.
"""

from __future__ import annotations

import duckdb
import pytest

from recordings import extensions
from recordings import lake as lakes
from recordings.lake import Lake
from recordings.store import Store, StoreError
from tests.support.gateway import free_port


def test_an_s3_data_path_is_parsed_as_documented(tmp_path):
    lake = Lake.parse("postgresql://gw@db.internal/portcullis", "s3://audit-bucket/portcullis")
    assert lake.data == "s3://audit-bucket/portcullis/" and lake.on_s3
    assert lake.extensions == ("ducklake", "postgres", "httpfs")
    # With external access off, the gateway's DuckDB reaches only these: the lake's own
    # prefix (commits write Parquet files there), nothing else of S3.
    assert lake.local_directories() == ["s3://audit-bucket/portcullis/"]
    local = Lake.parse(str(tmp_path / "x.lake"), "s3://b/p/")
    assert local.extensions == ("ducklake", "sqlite", "httpfs") and local.data == "s3://b/p/"


def test_an_s3_lake_links_httpfs_or_fails_closed_naming_the_wheel(tmp_path):
    lake = Lake.parse(str(tmp_path / "s3.lake"), "s3://audit-bucket/portcullis/")
    if extensions.wheel_binary("httpfs") is None:
        with pytest.raises(lakes.LakeError, match=f"pip install duckdb-extension-httpfs=={duckdb.__version__}"):
            lakes.extension_directory(tmp_path / "ext", lake.extensions)
        with pytest.raises(StoreError, match="duckdb-extension-httpfs"):
            Store(tmp_path / "gw.duckdb", lake=lake)
        assert not (tmp_path / "s3.lake" / "catalog.sqlite").exists()  # refused before anything was made
    else:
        root = lakes.extension_directory(tmp_path / "ext", lake.extensions)
        assert list(root.rglob("httpfs.duckdb_extension"))


class Recorder:
    def __init__(self) -> None:
        self.sql: list[str] = []

    def execute(self, sql: str) -> None:
        self.sql.append(sql)


def test_the_s3_secret_takes_the_documented_environment(monkeypatch):
    for name in lakes.S3_ENV.values():
        monkeypatch.delenv(name, raising=False)
    con = Recorder()
    lakes._s3_secret(con)  # type: ignore[arg-type]
    emptied = [f"SET GLOBAL {name} = ''" for name in lakes.S3_CREDENTIAL_SETTINGS]
    assert con.sql == emptied  # nothing set: no secret (DuckDB's defaults: no credentials)
    con.sql.clear()
    values = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "se'cret",
              "AWS_SESSION_TOKEN": "tok", "AWS_REGION": "eu-central-1",
              "PORTCULLIS_S3_ENDPOINT": "minio.internal:9000", "PORTCULLIS_S3_URL_STYLE": "path",
              "PORTCULLIS_S3_USE_SSL": "false"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    lakes._s3_secret(con)  # type: ignore[arg-type]
    assert con.sql == [
        "CREATE OR REPLACE SECRET portcullis_lake_s3 (TYPE s3, KEY_ID 'AKIAEXAMPLE', SECRET 'se''cret', "
        "SESSION_TOKEN 'tok', REGION 'eu-central-1', ENDPOINT 'minio.internal:9000', URL_STYLE 'path', "
        "USE_SSL 'false')", *emptied]
    # A temporary secret (no PERSISTENT): the keys are never written to disk by DuckDB.
    assert "PERSISTENT" not in con.sql[0]


def test_an_s3_lake_writes_to_the_configured_endpoint_through_the_confinement(tmp_path, monkeypatch):
    """With the httpfs wheel only (not a dependency: skipped without it). No S3 here: the
    endpoint is a closed port, so the commit that writes a Parquet file fails, and the
    error shows the request DuckDB made: path style, plain HTTP, the bucket and prefix."""
    if extensions.wheel_binary("httpfs") is None:
        pytest.skip(f"duckdb-extension-httpfs=={duckdb.__version__} is not installed")
    port = free_port()
    for name, value in {"PORTCULLIS_S3_ENDPOINT": f"127.0.0.1:{port}", "PORTCULLIS_S3_URL_STYLE": "path",
                        "PORTCULLIS_S3_USE_SSL": "false", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
                        "AWS_SECRET_ACCESS_KEY": "example-secret", "AWS_SESSION_TOKEN": "example-token",
                        "AWS_REGION": "eu-central-1"}.items():
        monkeypatch.setenv(name, value)
    store = Store(tmp_path / "gw.duckdb", lake=Lake.parse(str(tmp_path / "s3.lake"), "s3://audit-bucket/portcullis"))
    try:
        cur = store.cursor()
        store.insert(cur, [{"id": "small", "decision": "allowed", "rules": []}], [])  # inlined: no S3
        with pytest.raises(duckdb.Error, match=f"PUT to 'http://127.0.0.1:{port}/audit-bucket/portcullis/main/flows/"):
            store.insert(cur, [{"id": f"big-{i}", "decision": "allowed", "rules": []}
                               for i in range(lakes.INLINE_ROWS + 1)], [])
        cur.close()
        assert store.query("SELECT name, type FROM duckdb_secrets()")[1] == [("portcullis_lake_s3", "s3")]
        # An analyst's SELECT (the SQL page) cannot read the gateway's S3 key: the secret
        # is redacted, and the settings httpfs filled from the environment are empty.
        seen = repr(store.query("SELECT * FROM duckdb_secrets()")[1]) + repr(store.query(
            "SELECT name, value FROM duckdb_settings() WHERE name LIKE 's3%'")[1]) + repr(store.query(
            "SELECT current_setting('s3_secret_access_key'), current_setting('s3_session_token')")[1])
        assert "example-secret" not in seen and "example-token" not in seen
    finally:
        store.close()
