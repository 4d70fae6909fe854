"""The registry schema in SQLAlchemy Core: one definition for SQLite and PostgreSQL.

Immutability is enforced by the database, not only by this code: triggers refuse any UPDATE or
DELETE of ``audit_log`` and any change of a model version or snapshot other than ``retired``.
"""
from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

model_versions = sa.Table(
    "model_versions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("format", sa.String(20), nullable=False),
    sa.Column("filename", sa.String(300), nullable=False),
    sa.Column("input_schema", sa.JSON, nullable=False),
    sa.Column("output_schema", sa.JSON, nullable=False),
    sa.Column("feature_set_name", sa.String(200)),
    sa.Column("feature_set_fingerprint", sa.String(64)),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("retired", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
)

feature_snapshots = sa.Table(
    "feature_snapshots", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("row_count", sa.BigInteger, nullable=False),
    sa.Column("key_column", sa.String(200), nullable=False),
    sa.Column("schema_fingerprint", sa.String(64), nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("columns", sa.JSON, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_feature_snapshots_name_version"),
)

environments = sa.Table(
    "environments", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("requires_previous_champion", sa.Boolean, nullable=False, default=False),
    sa.Column("event_fields", sa.JSON),
)

# One row per (model, environment); ``revision`` is the compare-and-set token of every change.
deployments = sa.Table(
    "deployments", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("env", sa.String(100), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("features_name", sa.String(200)),
    sa.Column("features_version", sa.Integer),
    sa.Column("updated_by", sa.String(200), nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

# The versions a deployment serves and in which role: exactly one champion, any number of shadows
# (scored beside it, never served) and at most one canary (serving ``share`` of the entities).
deployment_roles = sa.Table(
    "deployment_roles", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("env", sa.String(100), primary_key=True),
    sa.Column("role", sa.String(20), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("share", sa.Float, nullable=False, default=1.0),
    sa.ForeignKeyConstraint(["name", "env"], ["deployments.name", "deployments.env"]),
    sa.CheckConstraint("role IN ('champion', 'shadow', 'canary')", name="ck_deployment_roles_role"),
)

# The in-stream champion/challenger comparison, one row per (deployment, pair, window) as the job
# emitted it (operators.experiments.WindowComparison.summary()); a window emitted again after a
# restart is the same row (unique), so replays do not count twice. Each scorer (Flink subtask) of a
# job compares its own share of the events: one row per scorer and window.
comparisons = sa.Table(
    "comparisons", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("env", sa.String(100), nullable=False),
    sa.Column("champion_version", sa.Integer, nullable=False),
    sa.Column("challenger_version", sa.Integer, nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("window_start_ms", sa.BigInteger, nullable=False),
    sa.Column("scorer", sa.Integer, nullable=False, server_default="0"),   # the job's subtask that emitted it
    sa.Column("compared", sa.BigInteger, nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("recorded_at", TS, nullable=False),
    sa.UniqueConstraint("name", "env", "champion_version", "challenger_version", "window_start_ms",
                        "scorer", name="uq_comparisons_window"),
)

audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("env", sa.String(100)),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer),
    sa.Column("features", sa.String(250)),
    sa.Column("revision", sa.Integer),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.JSON),
    sa.CheckConstraint("length(reason) > 0", name="ck_audit_log_reason"),
)
sa.Index("ix_audit_log_name_env", audit_log.c.name, audit_log.c.env, audit_log.c.id)

IMMUTABLE_MODEL_COLUMNS = ("name", "version", "uri", "sha256", "size", "format", "filename", "input_schema",
                           "output_schema", "feature_set_name", "feature_set_fingerprint", "meta",
                           "created_by", "created_at")


def sqlite_triggers() -> list[str]:
    cols = ", ".join(IMMUTABLE_MODEL_COLUMNS)
    return [
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END",
        f"CREATE TRIGGER IF NOT EXISTS model_versions_immutable BEFORE UPDATE OF {cols} ON model_versions "
        "BEGIN SELECT RAISE(ABORT, 'model versions are immutable (only retired may change)'); END",
        "CREATE TRIGGER IF NOT EXISTS model_versions_no_delete BEFORE DELETE ON model_versions "
        "BEGIN SELECT RAISE(ABORT, 'model versions are immutable: DELETE refused'); END",
        "CREATE TRIGGER IF NOT EXISTS feature_snapshots_immutable BEFORE UPDATE ON feature_snapshots "
        "BEGIN SELECT RAISE(ABORT, 'feature snapshots are immutable'); END",
    ]


def postgres_triggers(schema: str | None) -> list[str]:
    q = f'"{schema}".' if schema else ""
    cols = ", ".join(IMMUTABLE_MODEL_COLUMNS)
    return [
        f"""CREATE OR REPLACE FUNCTION {q}streamscore_registry_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '%% is append-only/immutable: %% refused', TG_TABLE_NAME, TG_OP; END $$""",
        f"CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {q}audit_log "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {q}streamscore_registry_refuse()",
        f"CREATE OR REPLACE TRIGGER model_versions_immutable BEFORE UPDATE OF {cols} OR DELETE ON {q}model_versions "
        f"FOR EACH ROW EXECUTE FUNCTION {q}streamscore_registry_refuse()",
        f"CREATE OR REPLACE TRIGGER feature_snapshots_immutable BEFORE UPDATE OR DELETE ON {q}feature_snapshots "
        f"FOR EACH ROW EXECUTE FUNCTION {q}streamscore_registry_refuse()",
    ]
