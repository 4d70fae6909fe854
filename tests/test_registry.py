"""The registry (package ``registry``) on SQLite and PostgreSQL: versions, snapshots, promotion
policy, schema checks, rollback, retire, audit immutability, concurrency, artifact checks, following."""
from __future__ import annotations

import hashlib
import threading
import time

import pyarrow as pa
import pytest
import sqlalchemy as sa

from registry import (
    ArtifactError, Conflict, Environment, NotFound, PolicyRefused, RegistryError, open_registry,
)
from registry_fixtures import (  # noqa: F401 - fixtures
    FEATURES, MODELS, features_table, model_copy, pg_registry_uri, reg, registry_uri_for_test, write_parquet,
)

WHO = dict(actor="tester@host", reason="test")


def _promote_to_production(reg, version: int, **kw):
    for env in ("integration", "qa", "production"):
        reg.promote("fraud", version, env, **WHO, **kw)


# --- model versions ----------------------------------------------------------------------------

def test_register_records_sha256_size_format_and_schema(reg, tmp_path):
    src = model_copy(tmp_path, "logreg.onnx")
    mv = reg.register_model("fraud", str(src), actor="ana", reason="first", metadata={"auc": 0.91, "run": "r1"})
    assert (mv.name, mv.version, mv.format) == ("fraud", 1, "onnx")
    assert mv.sha256 == hashlib.sha256(src.read_bytes()).hexdigest() and mv.size == src.stat().st_size
    assert [f["name"] for f in mv.input_schema] == FEATURES
    assert {f["name"] for f in mv.output_schema} >= {"score", "label"}
    assert mv.metadata["auc"] == 0.91 and mv.created_by == "ana" and not mv.retired
    mv2 = reg.register_model("fraud", f"file://{model_copy(tmp_path, 'forest.skops')}", **WHO)
    assert (mv2.version, mv2.format) == (2, "sklearn")
    assert [v.version for v in reg.model_versions("fraud")] == [1, 2]
    assert reg.model_version("fraud").version == 2                      # latest
    entry = reg.history("fraud")[0]
    assert (entry.action, entry.to_version, entry.actor) == ("register", 2, "tester@host")


def test_corrupt_artifact_is_refused_at_register_and_audited(reg, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07" + b"not an onnx graph" * 50)
    with pytest.raises(ArtifactError, match="does not load"):
        reg.register_model("fraud", str(bad), **WHO)
    with pytest.raises(NotFound):
        reg.model_versions("fraud")
    assert reg.history("fraud")[0].action == "register-refused"
    with pytest.raises(ArtifactError, match="no such file"):
        reg.register_model("fraud", str(tmp_path / "missing.onnx"), **WHO)


def test_a_reason_and_an_actor_are_required(reg, tmp_path):
    with pytest.raises(RegistryError, match="reason is required"):
        reg.register_model("fraud", str(model_copy(tmp_path)), actor="ana", reason="  ")
    with pytest.raises(RegistryError, match="actor is required"):
        reg.register_model("fraud", str(model_copy(tmp_path)), actor="", reason="x")


def test_typos_list_what_exists(reg, tmp_path):
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    reg.register_model("fraud", str(model_copy(tmp_path, "forest.onnx")), **WHO)
    with pytest.raises(NotFound, match=r"did you mean fraud\?.*existing: fraud"):
        reg.model_version("frud", 1)
    with pytest.raises(NotFound, match=r"no version of fraud 7 \(existing: 1, 2\)"):
        reg.model_version("fraud", 7)
    with pytest.raises(NotFound, match="did you mean production"):
        reg.promote("fraud", 1, "prodution", **WHO)


# --- feature snapshots ---------------------------------------------------------------------------

def test_snapshot_register_and_fetch_checks_the_checksum(reg, tmp_path):
    path = write_parquet(tmp_path, features_table(250))
    snap = reg.register_snapshot("customers", str(path), key_column="entity_id", **WHO)
    assert (snap.name, snap.version, snap.row_count, snap.key_column) == ("customers", 1, 250, "entity_id")
    assert [c["name"] for c in snap.columns] == ["entity_id", *FEATURES]
    table = reg.fetch_snapshot(snap)
    assert table.num_rows == 250 and table.column_names == ["entity_id", *FEATURES]
    snap2 = reg.register_snapshot("customers", str(write_parquet(tmp_path, features_table(10))),
                                  key_column="entity_id", **WHO)
    assert snap2.version == 2 and snap2.schema_fingerprint == snap.schema_fingerprint
    assert reg.snapshot("customers@1") == snap and reg.snapshot("customers").version == 2
    # the durable file changes under the registry: refused on fetch
    import pyarrow.parquet as pq
    pq.write_table(features_table(250).slice(1), path)
    with pytest.raises(ArtifactError, match="checksum/rows mismatch"):
        reg.fetch_snapshot(snap)


def test_snapshot_without_its_key_or_with_duplicate_keys_is_refused(reg, tmp_path):
    with pytest.raises(ArtifactError, match="no key column 'customer'"):
        reg.register_snapshot("customers", str(write_parquet(tmp_path, features_table(5))), key_column="customer", **WHO)
    dup = pa.concat_tables([features_table(5), features_table(5)])
    with pytest.raises(ArtifactError, match="5 duplicate keys"):
        reg.register_snapshot("customers", str(write_parquet(tmp_path, dup)), key_column="entity_id", **WHO)
    with pytest.raises(NotFound):
        reg.snapshots("customers")


# --- promotion, policy, schema checks -----------------------------------------------------------

def test_promotion_policy_requires_the_previous_environment(reg, tmp_path):
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    with pytest.raises(PolicyRefused, match="qa requires the version to have been champion in integration"):
        reg.promote("fraud", 1, "qa", **WHO)
    refused = reg.history("fraud", env="qa")[0]
    assert (refused.action, refused.to_version) == ("promote-refused", 1)
    assert "integration" in refused.detail["refusal"]
    assert reg.deployment("fraud", "qa") is None
    d = reg.promote("fraud", 1, "integration", **WHO)
    assert (d.env, d.revision, d.champion.version, d.features) == ("integration", 1, 1, None)
    assert reg.promote("fraud", 1, "qa", **WHO).champion.version == 1
    assert reg.promote("fraud", 1, "production", **WHO).revision == 1
    with pytest.raises(RegistryError, match="already champion"):
        reg.promote("fraud", 1, "production", **WHO)


def test_configured_environments_replace_the_defaults(reg, tmp_path):
    reg.init([Environment("dev", 0), Environment("prod", 1, requires_previous_champion=True)])
    assert [(e.name, e.requires_previous_champion) for e in reg.environments()] == [("dev", False), ("prod", True)]
    reg.init()                                                          # idempotent: keeps the configuration
    assert [e.name for e in reg.environments()] == ["dev", "prod"]
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    with pytest.raises(PolicyRefused, match="champion in dev"):
        reg.promote("fraud", 1, "prod", **WHO)
    with pytest.raises(RegistryError, match="first one"):
        reg.init([Environment("prod", 0, requires_previous_champion=True)])


def test_incompatible_inputs_are_refused_naming_the_mismatch(reg, tmp_path):
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    no_ratio = reg.register_snapshot("customers", str(write_parquet(tmp_path, features_table(20, drop=("ratio",)))),
                                     key_column="entity_id", **WHO)
    # the events are declared: amount only -> ratio is missing
    with pytest.raises(PolicyRefused, match=r"missing inputs ratio"):
        reg.promote("fraud", 1, "integration", features=no_ratio.ref, event_fields="amount:double", **WHO)
    # a snapshot column of the wrong type
    text_velocity = reg.register_snapshot(
        "customers", str(write_parquet(tmp_path, features_table(20, types={"velocity": pa.string()}))),
        key_column="entity_id", **WHO)
    with pytest.raises(PolicyRefused, match=r"velocity: model wants float, snapshot has string"):
        reg.promote("fraud", 1, "integration", features=text_velocity.ref, **WHO)
    entries = [e for e in reg.history("fraud", env="integration") if e.action == "promote-refused"]
    assert len(entries) == 2 and entries[1].detail["missing"] == ["ratio"]
    assert entries[0].detail["mistyped"] == ["velocity: model wants float, snapshot has string"]
    # events provide ratio: accepted, the snapshot is pinned
    d = reg.promote("fraud", 1, "integration", features=no_ratio.ref, event_fields="amount:double,ratio:double", **WHO)
    assert d.features.ref == "customers@1"


def test_model_feature_set_is_pinned_by_default_and_checked(reg, tmp_path):
    snap = reg.register_snapshot("customers", str(write_parquet(tmp_path, features_table(20))),
                                 key_column="entity_id", **WHO)
    other = reg.register_snapshot("merchants", str(write_parquet(tmp_path, features_table(20))),
                                  key_column="entity_id", **WHO)
    mv = reg.register_model("fraud", str(model_copy(tmp_path)), feature_set="customers", **WHO)
    assert (mv.feature_set.name, mv.feature_set.fingerprint) == ("customers", snap.schema_fingerprint)
    with pytest.raises(PolicyRefused, match="built for feature set 'customers'"):
        reg.promote("fraud", 1, "integration", features=other.ref, **WHO)
    assert reg.promote("fraud", 1, "integration", **WHO).features.ref == "customers@1"


# --- rollback and retire ------------------------------------------------------------------------

def test_rollback_returns_to_the_previous_champion_and_snapshot(reg, tmp_path):
    s1 = reg.register_snapshot("customers", str(write_parquet(tmp_path, features_table(20))),
                               key_column="entity_id", **WHO)
    s2 = reg.register_snapshot("customers", str(write_parquet(tmp_path, features_table(30))),
                               key_column="entity_id", **WHO)
    for name in ("logreg.onnx", "forest.onnx", "gbm.onnx"):
        reg.register_model("fraud", str(model_copy(tmp_path, name)), **WHO)
    reg.promote("fraud", 1, "integration", features=s1.ref, **WHO)
    reg.promote("fraud", 2, "integration", features=s2.ref, **WHO)
    reg.promote("fraud", 3, "integration", **WHO)                      # keeps s2
    d = reg.rollback("fraud", "integration", actor="ops", reason="drift")
    assert (d.champion.version, d.features.ref, d.revision) == (2, "customers@2", 4)
    d = reg.rollback("fraud", "integration", **WHO)
    assert (d.champion.version, d.features.ref, d.revision) == (1, "customers@1", 5)
    with pytest.raises(PolicyRefused, match="no previous champion"):
        reg.rollback("fraud", "integration", **WHO)
    moves = [(e.action, e.from_version, e.to_version) for e in reversed(reg.history("fraud", env="integration"))]
    assert moves == [("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3), ("rollback", 3, 2),
                     ("rollback", 2, 1)]
    assert reg.history("fraud", env="integration")[1].actor == "ops"


def test_retire_refuses_serving_versions_and_blocks_promotion(reg, tmp_path):
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    reg.register_model("fraud", str(model_copy(tmp_path, "forest.onnx")), **WHO)
    reg.promote("fraud", 1, "integration", **WHO)
    with pytest.raises(PolicyRefused, match="serving \\(champion in integration\\)"):
        reg.retire("fraud", 1, **WHO)
    assert reg.retire("fraud", 2, **WHO).retired
    with pytest.raises(PolicyRefused, match="retired"):
        reg.promote("fraud", 2, "integration", **WHO)
    assert reg.model_version("fraud").version == 1                      # latest live version
    assert reg.history("fraud")[1].action == "retire"


def test_refusal_by_a_running_job_is_in_the_history(reg, tmp_path):
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    reg.promote("fraud", 1, "integration", **WHO)
    reg.record_refusal("fraud", "integration", 1, actor="job@worker-3", reason="sha256 mismatch on fetch")
    e = reg.history("fraud", env="integration")[0]
    assert (e.action, e.actor, e.to_version, e.revision) == ("refused-by-job", "job@worker-3", 1, 1)


# --- the audit log and versions are immutable in the database itself ------------------------------

def test_audit_log_and_model_versions_are_append_only(reg, tmp_path):
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    schema = f'"{reg.schema}".' if reg.schema else ""
    statements = [f"UPDATE {schema}audit_log SET reason = 'rewritten'",
                  f"DELETE FROM {schema}audit_log",
                  f"UPDATE {schema}model_versions SET sha256 = 'x'",
                  f"DELETE FROM {schema}model_versions"]
    if reg.backend == "postgresql":
        statements.append(f"TRUNCATE {schema}audit_log")
    for sql in statements:
        with pytest.raises(sa.exc.DBAPIError, match="append-only|immutable"):
            with reg.engine.begin() as conn:
                conn.exec_driver_sql(sql)
    assert reg.history("fraud")[0].reason == "test" and reg.model_version("fraud", 1).sha256 != "x"


# --- concurrency -----------------------------------------------------------------------------------

def test_two_concurrent_promotions_one_wins_the_other_conflicts(registry_uri_for_test, tmp_path):
    setup = open_registry(registry_uri_for_test, cache_dir=tmp_path / "cache")
    setup.init()
    for name in ("logreg.onnx", "forest.onnx", "gbm.onnx"):
        setup.register_model("fraud", str(model_copy(tmp_path, name)), **WHO)
    setup.promote("fraud", 1, "integration", **WHO)
    barrier, results = threading.Barrier(2), {}

    def promoter(version: int) -> None:
        reg = open_registry(registry_uri_for_test, cache_dir=tmp_path / "cache")   # a client of its own
        seen = reg.deployment("fraud", "integration").revision
        barrier.wait(timeout=30)                        # both have read revision 1 before either writes
        try:
            results[version] = reg.promote("fraud", version, "integration", expected_revision=seen, **WHO)
        except Conflict as exc:
            results[version] = exc
        finally:
            reg.close()

    threads = [threading.Thread(target=promoter, args=(v,)) for v in (2, 3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    conflicts = [r for r in results.values() if isinstance(r, Conflict)]
    winners = [r for r in results.values() if not isinstance(r, Exception)]
    assert len(results) == 2 and len(conflicts) == 1 and len(winners) == 1, results
    final = setup.deployment("fraud", "integration")
    assert (final.revision, final.champion.version) == (2, winners[0].champion.version)
    setup.close()


PROMOTER = """
import sys, time, pathlib
from registry import Conflict, open_registry
uri, cache, version, ready, go = sys.argv[1:]
reg = open_registry(uri, cache_dir=cache)
seen = reg.deployment("fraud", "integration").revision
pathlib.Path(ready).touch()
deadline = time.monotonic() + 120
while not pathlib.Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("the go file never appeared")
    time.sleep(0.01)
try:
    d = reg.promote("fraud", int(version), "integration", actor="proc", reason="race", expected_revision=seen)
    print("won", d.revision)
except Conflict as exc:
    print("conflict", exc)
"""


def test_two_processes_promoting_at_once_one_conflicts(registry_uri_for_test, tmp_path):
    """As above with two OS processes (separate interpreters and connection pools)."""
    import subprocess
    import sys

    setup = open_registry(registry_uri_for_test, cache_dir=tmp_path / "cache")
    setup.init()
    for name in ("logreg.onnx", "forest.onnx", "gbm.onnx"):
        setup.register_model("fraud", str(model_copy(tmp_path, name)), **WHO)
    setup.promote("fraud", 1, "integration", **WHO)
    go = tmp_path / "go"
    procs, readies = [], []
    for version in (2, 3):
        ready = tmp_path / f"ready-{version}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", PROMOTER, registry_uri_for_test, str(tmp_path / "cache"),
                                       str(version), str(ready), str(go)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline, "the promoter processes did not read the deployment within 300 s"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()                                          # both read revision 1; now both write
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    verdicts = sorted(out.split()[0] for out, _ in outputs)
    assert verdicts == ["conflict", "won"], outputs
    assert setup.deployment("fraud", "integration").revision == 2
    assert [e.action for e in setup.history("fraud", env="integration")] == ["promote", "promote"]
    setup.close()


def test_concurrent_promoters_lose_no_update(registry_uri_for_test, tmp_path):
    """Four clients promote as fast as they can without coordination: each attempt either wins or
    gets Conflict, and the audit log's from -> to chain has no gap (every win saw the previous one)."""
    setup = open_registry(registry_uri_for_test, cache_dir=tmp_path / "cache")
    setup.init()
    for name in ("logreg.onnx", "forest.onnx", "gbm.onnx"):
        setup.register_model("fraud", str(model_copy(tmp_path, name)), **WHO)
    wins, conflicts, errors = [], [], []

    def promoter(worker: int) -> None:
        reg = open_registry(registry_uri_for_test, cache_dir=tmp_path / "cache")
        for i in range(12):
            current = reg.deployment("fraud", "integration")
            version = [v for v in (1, 2, 3) if not current or v != current.champion.version][(worker + i) % 2]
            try:
                wins.append(reg.promote("fraud", version, "integration", **WHO).revision)
            except Conflict:
                conflicts.append(worker)
            except RegistryError as exc:                # "already champion": someone promoted it meanwhile
                if "already champion" not in str(exc):
                    errors.append(exc)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        reg.close()

    threads = [threading.Thread(target=promoter, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    assert sorted(wins) == list(range(1, len(wins) + 1)), "every revision was produced by exactly one win"
    chain = [e for e in reversed(setup.history("fraud", env="integration", limit=1000)) if e.action == "promote"]
    assert [e.revision for e in chain] == list(range(1, len(wins) + 1))
    for before, after in zip(chain, chain[1:]):
        assert after.from_version == before.to_version, "a promotion did not see the one before it"
    assert setup.deployment("fraud", "integration").revision == len(wins)
    setup.close()


# --- artifacts ---------------------------------------------------------------------------------------

def test_fetch_model_verifies_the_cache_and_the_source(reg, tmp_path):
    src = model_copy(tmp_path)
    mv = reg.register_model("fraud", str(src), **WHO)
    cache = tmp_path / "host-b-cache"
    path = reg.fetch_model(mv, cache_dir=cache)
    assert path == cache / mv.sha256 / "logreg.onnx" and hashlib.sha256(path.read_bytes()).hexdigest() == mv.sha256
    path.write_bytes(b"tampered")                                       # corrupt cache entry: fetched again
    assert hashlib.sha256(reg.fetch_model(mv, cache_dir=cache).read_bytes()).hexdigest() == mv.sha256
    path.unlink()
    src.write_bytes((MODELS / "forest.onnx").read_bytes())              # the source changed after register
    with pytest.raises(ArtifactError, match="sha256/size mismatch"):
        reg.fetch_model(mv, cache_dir=cache)
    assert not path.exists()


# --- following ---------------------------------------------------------------------------------------

def test_wait_for_change_wakes_on_promotion_and_times_out_otherwise(reg, tmp_path):
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    reg.register_model("fraud", str(model_copy(tmp_path, "forest.onnx")), **WHO)
    reg.promote("fraud", 1, "integration", **WHO)
    assert reg.wait_for_change("fraud", "integration", timeout_s=0.3) is False
    assert reg.wait_for_change("fraud", "integration", timeout_s=0.1, since_revision=0) is True
    promoter = threading.Timer(0.5, lambda: reg.promote("fraud", 2, "integration", **WHO))
    promoter.start()
    try:
        assert reg.wait_for_change("fraud", "integration", timeout_s=30) is True
    finally:
        promoter.join()
    assert reg.deployment("fraud", "integration").revision == 2


def test_postgres_connection_dropped_is_reestablished(pg_registry_uri, tmp_path):
    """PostgreSQL only: the shared cluster cannot be restarted under the other tests, so the
    registry's own session is killed server-side (what a database restart does to it)."""
    import psycopg

    from feature_store_fixtures import POSTGRES_URL

    reg = open_registry(pg_registry_uri, cache_dir=tmp_path / "cache")
    reg.init()
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    with reg.engine.connect() as conn:
        pids = {conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()}
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        killed = admin.execute("SELECT count(*) FROM (SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) p) k",
                               (list(pids),)).fetchone()[0]
    assert killed == 1
    # the pooled connection is dead: the next operation reconnects (pool_pre_ping) and succeeds
    d = reg.promote("fraud", 1, "integration", **WHO)
    assert d.revision == 1
    with reg.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() not in pids
    reg.close()


# --- s3:// through pyarrow's S3 filesystem, against the repo's embedded S3 server -----------------

@pytest.fixture(scope="module")
def local_s3(tmp_path_factory):
    import os

    pytest.importorskip("alocals3", reason="alocals3 not installed (pip install '.[embedded]')")
    from connectors.embedded.local_s3 import LocalS3

    with LocalS3(tmp_path_factory.mktemp("s3"), bucket="artifacts") as s3:
        saved = {k: os.environ.get(k) for k in s3.broker_env()}
        os.environ.update(s3.broker_env())          # credentials for pyarrow's S3 client (not checked)
        yield s3
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _s3_put(s3, key: str, data: bytes) -> str:
    """PUT an object (plain HTTP: alocals3 has no multipart upload, which pyarrow's writer uses) and
    return the s3:// URI pyarrow reads it by. alocals3 serves the S3 API under /s3, which pyarrow's
    endpoint_override cannot carry: the "s3" path segment is given as the bucket, so the request
    path is /s3/<bucket>/<key> as on alocals3."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{s3.endpoint}/{s3.bucket}/{key}", data=data, method="PUT"),
                           timeout=30).close()
    return f"s3://s3/{s3.bucket}/{key}?endpoint_override=127.0.0.1:{s3.port}&scheme=http"


def test_s3_model_and_snapshot(reg, tmp_path, local_s3):
    import io

    import pyarrow.parquet as pq

    data = (MODELS / "logreg.onnx").read_bytes()
    uri = _s3_put(local_s3, f"{reg.backend}/fraud/logreg.onnx", data)
    mv = reg.register_model("fraud", uri, **WHO)
    assert mv.uri == uri and mv.sha256 == hashlib.sha256(data).hexdigest() and mv.filename == "logreg.onnx"
    fetched = reg.fetch_model(mv, cache_dir=tmp_path / "host-b")
    assert fetched.read_bytes() == data
    buf = io.BytesIO()
    pq.write_table(features_table(30), buf)
    snap_uri = _s3_put(local_s3, f"{reg.backend}/customers/part-0.parquet", buf.getvalue())
    snap = reg.register_snapshot("customers", snap_uri, key_column="entity_id", **WHO)
    assert snap.row_count == 30 and reg.fetch_snapshot(snap).num_rows == 30
    _s3_put(local_s3, f"{reg.backend}/fraud/logreg.onnx", (MODELS / "forest.onnx").read_bytes())   # overwritten
    with pytest.raises(ArtifactError, match="sha256/size mismatch"):
        reg.fetch_model(mv, cache_dir=tmp_path / "host-c")


def test_wait_for_change_reports_a_lost_postgres_connection(pg_registry_uri, tmp_path):
    """A job following the registry learns that the database went away (RegistryUnavailable), it
    does not hang or take it for "no change" (PostgreSQL: LISTEN runs on a session of its own)."""
    import psycopg

    from feature_store_fixtures import POSTGRES_URL
    from registry import RegistryUnavailable

    reg = open_registry(pg_registry_uri, cache_dir=tmp_path / "cache")
    reg.init()
    reg.register_model("fraud", str(model_copy(tmp_path)), **WHO)
    reg.promote("fraud", 1, "integration", **WHO)
    outcome = {}

    def follow() -> None:
        try:
            outcome["changed"] = reg.wait_for_change("fraud", "integration", timeout_s=120)
        except RegistryUnavailable as exc:
            outcome["error"] = exc

    follower = threading.Thread(target=follow)
    follower.start()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        deadline = time.monotonic() + 60
        while True:                                     # the follower's LISTEN session, found by its channel
            pids = [r[0] for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE %s", (f'LISTEN "{reg._channel}"',)).fetchall()]
            if pids:
                break
            assert time.monotonic() < deadline, "the follower never issued LISTEN"
            time.sleep(0.05)
        admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
    follower.join(timeout=60)
    assert not follower.is_alive(), "wait_for_change kept waiting on a dead connection"
    assert "error" in outcome, outcome
    assert reg.wait_for_change("fraud", "integration", timeout_s=0.2) is False     # and works again after
    reg.close()


def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path):
    """Following jobs poll the revision: on SQLite (WAL) a read neither waits for an open write
    transaction (busy_timeout is 30 s) nor sees its uncommitted change."""
    reg = open_registry(f"sqlite:///{tmp_path / 'r.db'}", cache_dir=tmp_path / "cache")
    reg.init()
    outcome = {}
    with reg._tx() as writer:
        writer.exec_driver_sql("INSERT INTO environments(name, position, requires_previous_champion) VALUES ('x', 9, 0)")
        reader = threading.Thread(target=lambda: outcome.setdefault("envs", [e.name for e in reg.environments()]))
        reader.start()
        reader.join(timeout=20)
        assert not reader.is_alive(), "a read waited for the open write transaction"
    assert outcome["envs"] == ["integration", "qa", "production"]
    assert [e.name for e in reg.environments()][-1] == "x"
    reg.close()
