"""The registry: model versions, feature snapshots, environments, deployments and the audit log on
SQLite or PostgreSQL (SQLAlchemy Core, one schema for both).

Changes to a deployment are compare-and-set on its ``revision``: two concurrent promotions of one
deployment cannot both win, the loser gets ``Conflict`` and nothing is lost.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy import event

from registry import tables as t
from registry.artifacts import ModelCache, resolve, sha256_of, download, default_cache_dir
from registry.errors import ArtifactError, Conflict, NotFound, PolicyRefused, RegistryError, RegistryUnavailable
from registry.records import (
    ROLES, AuditEntry, Deployment, Environment, FeatureSetRef, FeatureSnapshot, Gate, ModelVersion,
)
from registry.snapshots import (
    Compatibility, check_inputs, parse_event_fields, read_dataset, schema_columns, schema_fingerprint,
)

DEFAULT_ENVIRONMENTS = (
    Environment("integration", 0, requires_previous_champion=False),
    Environment("qa", 1, requires_previous_champion=True),
    Environment("production", 2, requires_previous_champion=True),
)


REPLAY_SCORER = -1      # the ``scorer`` of comparison windows a replay recorded (live scorers are subtasks, >= 0)


def default_registry_uri() -> str:
    """``$STREAMSCORE_REGISTRY``, else a SQLite file under the cache dir."""
    return os.environ.get("STREAMSCORE_REGISTRY") or f"sqlite:///{default_cache_dir() / 'registry.db'}"


def default_actor() -> str:
    """``user@host`` (the login name from the environment or the password database)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def open_registry(uri: str | None = None, *, cache_dir: str | os.PathLike | None = None) -> "Registry":
    """A registry on ``sqlite:////abs/path.db`` or ``postgresql://user@host:port/db[?schema=NAME]``
    (default: :func:`default_registry_uri`). Call ``init()`` once to create the tables."""
    return Registry(uri or default_registry_uri(), cache_dir=cache_dir)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _need_reason(reason: str, actor: str) -> None:
    if not reason or not str(reason).strip():
        raise RegistryError("a reason is required for every change (it goes to the audit log)")
    if not actor or not str(actor).strip():
        raise RegistryError("an actor is required for every change (it goes to the audit log)")


class Registry:
    """Model and feature registry on one database (see the module docstring)."""

    def __init__(self, uri: str, *, cache_dir: str | os.PathLike | None = None) -> None:
        self.uri = uri
        self.cache = ModelCache(Path(cache_dir) if cache_dir else None)
        self.schema: str | None = None
        self._channel = "streamscore_registry"
        parts = urlsplit(uri)
        scheme = parts.scheme.split("+")[0]
        if scheme == "sqlite":
            self.backend = "sqlite"
            path = uri.split("sqlite:///", 1)[1] if "sqlite:///" in uri else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(uri, connect_args={"timeout": 30, "check_same_thread": False})
            self._setup_sqlite()
        elif scheme in ("postgresql", "postgres"):
            self.backend = "postgresql"
            query = dict(parse_qsl(parts.query))
            self.schema = query.pop("schema", None)
            if self.schema and not self.schema.replace("_", "").isalnum():
                raise RegistryError(f"schema={self.schema!r}: letters, digits and _ only")
            self._pg_dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
            sa_url = urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), ""))
            self.engine = sa.create_engine(sa_url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                                           execution_options={"schema_translate_map": {None: self.schema}})
            if self.schema:
                self._channel = f"streamscore_registry_{self.schema}"[:63]
        else:
            raise RegistryError(f"registry URI {uri!r}: expected sqlite:///PATH or postgresql://…")

    # -- plumbing ------------------------------------------------------------------------------

    def _setup_sqlite(self) -> None:
        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None       # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _begin(conn):  # noqa: ANN001
            # writers: IMMEDIATE takes the write lock up front, so concurrent writers wait
            # (busy_timeout) instead of failing on a lock upgrade; readers: a plain BEGIN, which in
            # WAL mode neither waits for nor blocks a writer (following jobs poll the revision)
            read_only = conn.get_execution_options().get("registry_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    def _read(self):
        """A read-only transaction (see ``_tx``)."""
        return self._tx(read_only=True)

    @contextlib.contextmanager
    def _tx(self, read_only: bool = False) -> Iterator[sa.Connection]:
        """One transaction; database outages become ``RegistryUnavailable``."""
        try:
            with self.engine.connect() as conn:
                if read_only:
                    conn = conn.execution_options(registry_read_only=True)
                with conn.begin():
                    yield conn
        except (sa.exc.IntegrityError, RegistryError):
            raise
        except sa.exc.OperationalError as exc:
            raise RegistryUnavailable(f"registry database {self._safe_uri()}: "
                                      f"{' '.join(str(exc.orig).split())[:300]}") from exc
        except sa.exc.InterfaceError as exc:
            raise RegistryUnavailable(f"registry database {self._safe_uri()}: {exc.orig}") from exc

    def _safe_uri(self) -> str:
        return sa.engine.make_url(self.uri.split("?")[0]).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Registry {self._safe_uri()}{f' schema={self.schema}' if self.schema else ''}>"

    # -- setup ---------------------------------------------------------------------------------

    def init(self, environments: list[Environment] | None = None) -> None:
        """Create the tables and triggers (idempotent) and seed the environments: the given ones
        (replacing the configured set) or, on an empty registry, integration → qa → production."""
        try:
            with self.engine.begin() as conn:
                if self.backend == "postgresql":
                    # one initializer at a time (CREATE SCHEMA/TABLE IF NOT EXISTS and the triggers are
                    # not safe against a concurrent twin)
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                         (f"streamscore-registry-init-{self.schema}",))
                    if self.schema:
                        conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                t.metadata.create_all(conn)
                triggers = t.sqlite_triggers() if self.backend == "sqlite" else t.postgres_triggers(self.schema)
                for ddl in triggers:
                    conn.exec_driver_sql(ddl)
                existing = conn.execute(sa.select(sa.func.count()).select_from(t.environments)).scalar_one()
                if environments is not None or not existing:
                    envs = environments if environments is not None else list(DEFAULT_ENVIRONMENTS)
                    self._check_environments(envs)
                    conn.execute(t.environments.delete())
                    for e in envs:
                        conn.execute(t.environments.insert().values(
                            name=e.name, position=e.position, requires_previous_champion=e.requires_previous_champion,
                            event_fields=e.event_fields))
        except sa.exc.OperationalError as exc:
            raise RegistryUnavailable(f"registry database {self._safe_uri()}: "
                                      f"{' '.join(str(exc.orig).split())[:300]}") from exc

    @staticmethod
    def _check_environments(envs: list[Environment]) -> None:
        names = [e.name for e in envs]
        if not envs or len(set(names)) != len(names):
            raise RegistryError(f"environments must be a non-empty list of distinct names, got {names}")
        first = min(envs, key=lambda e: e.position)
        if first.requires_previous_champion:
            raise RegistryError(f"environment {first.name!r} is the first one: it has no previous environment")

    def environments(self) -> list[Environment]:
        """The configured environments, in promotion order."""
        with self._read() as conn:
            rows = conn.execute(sa.select(t.environments).order_by(t.environments.c.position)).all()
        return [Environment(r.name, r.position, bool(r.requires_previous_champion), r.event_fields) for r in rows]

    def environment(self, env: str) -> Environment:
        envs = self.environments()
        for e in envs:
            if e.name == env:
                return e
        raise NotFound("environment", env, [e.name for e in envs])

    # -- reading -------------------------------------------------------------------------------

    def _mv(self, row) -> ModelVersion:
        fs = FeatureSetRef(row.feature_set_name, row.feature_set_fingerprint) if row.feature_set_name else None
        return ModelVersion(
            name=row.name, version=row.version, uri=row.uri, sha256=row.sha256, size=row.size, format=row.format,
            filename=row.filename, input_schema=row.input_schema, output_schema=row.output_schema, feature_set=fs,
            metadata=row.meta or {}, created_by=row.created_by, created_at=_utc(row.created_at),
            retired=bool(row.retired))

    def _fs(self, row) -> FeatureSnapshot:
        return FeatureSnapshot(
            name=row.name, version=row.version, uri=row.uri, row_count=row.row_count, key_column=row.key_column,
            schema_fingerprint=row.schema_fingerprint, checksum=row.checksum, columns=row.columns,
            created_by=row.created_by, created_at=_utc(row.created_at))

    def model_names(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(sa.select(t.model_versions.c.name).distinct().order_by(t.model_versions.c.name))
                        .scalars())

    def model_versions(self, name: str | None = None, *, include_retired: bool = True) -> list[ModelVersion]:
        """Every version of ``name`` (or of every model), oldest first."""
        q = sa.select(t.model_versions).order_by(t.model_versions.c.name, t.model_versions.c.version)
        if name is not None:
            q = q.where(t.model_versions.c.name == name)
        if not include_retired:
            q = q.where(t.model_versions.c.retired == sa.false())
        with self._read() as conn:
            rows = conn.execute(q).all()
        if name is not None and not rows:
            raise NotFound("model", name, self.model_names())
        return [self._mv(r) for r in rows]

    def model_version(self, name: str, version: int | str | None = None) -> ModelVersion:
        """One version (``None``/"latest": the newest that is not retired)."""
        versions = self.model_versions(name)
        if version in (None, "latest"):
            live = [v for v in versions if not v.retired]
            if not live:
                raise NotFound(f"live version of {name}", "latest", [f"{v.version} (retired)" for v in versions])
            return live[-1]
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise NotFound(f"version of {name}", version, [str(v.version) for v in versions]) from None
        for v in versions:
            if v.version == number:
                return v
        raise NotFound(f"version of {name}", number, [str(v.version) for v in versions])

    def snapshot_names(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(sa.select(t.feature_snapshots.c.name).distinct()
                                     .order_by(t.feature_snapshots.c.name)).scalars())

    def snapshots(self, name: str | None = None) -> list[FeatureSnapshot]:
        q = sa.select(t.feature_snapshots).order_by(t.feature_snapshots.c.name, t.feature_snapshots.c.version)
        if name is not None:
            q = q.where(t.feature_snapshots.c.name == name)
        with self._read() as conn:
            rows = conn.execute(q).all()
        if name is not None and not rows:
            raise NotFound("feature snapshot", name, self.snapshot_names())
        return [self._fs(r) for r in rows]

    def snapshot(self, name: str, version: int | str | None = None) -> FeatureSnapshot:
        """One snapshot; ``name@3`` is accepted too; no version: the newest."""
        if version is None and "@" in name:
            name, version = name.split("@", 1)
        snaps = self.snapshots(name)
        if version in (None, "latest"):
            return snaps[-1]
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise NotFound(f"version of snapshot {name}", version, [str(s.version) for s in snaps]) from None
        for s in snaps:
            if s.version == number:
                return s
        raise NotFound(f"version of snapshot {name}", number, [str(s.version) for s in snaps])

    def deployments(self, name: str | None = None) -> list[Deployment]:
        q = sa.select(t.deployments.c.name, t.deployments.c.env)
        if name is not None:
            q = q.where(t.deployments.c.name == name)
        with self._read() as conn:
            keys = conn.execute(q).all()
            out = [self._deployment(conn, n, e) for n, e in keys]
        order = {e.name: e.position for e in self.environments()}
        return sorted((d for d in out if d), key=lambda d: (d.name, order.get(d.env, 99)))

    def deployment(self, name: str, env: str) -> Deployment | None:
        """What ``name`` serves in ``env`` (None when nothing was promoted there yet)."""
        with self._read() as conn:
            return self._deployment(conn, name, env)

    def _deployment(self, conn: sa.Connection, name: str, env: str) -> Deployment | None:
        d = conn.execute(sa.select(t.deployments).where(t.deployments.c.name == name, t.deployments.c.env == env)).first()
        if d is None:
            return None
        roles = conn.execute(sa.select(t.deployment_roles).where(
            t.deployment_roles.c.name == name, t.deployment_roles.c.env == env)).all()
        by_version = {r.version: self._mv(r) for r in conn.execute(sa.select(t.model_versions).where(
            t.model_versions.c.name == name, t.model_versions.c.version.in_([r.version for r in roles]))).all()}
        champion = next(by_version[r.version] for r in roles if r.role == "champion")
        canary = next(((by_version[r.version], r.share) for r in roles if r.role == "canary"), (None, 0.0))
        features = None
        if d.features_name is not None:
            row = conn.execute(sa.select(t.feature_snapshots).where(
                t.feature_snapshots.c.name == d.features_name,
                t.feature_snapshots.c.version == d.features_version)).first()
            features = self._fs(row) if row else None
        return Deployment(name=name, env=env, revision=d.revision, champion=champion, features=features,
                          shadows=[by_version[r.version] for r in roles if r.role == "shadow"],
                          canary=canary[0], canary_share=float(canary[1]),
                          updated_by=d.updated_by, updated_at=_utc(d.updated_at))

    def revision(self, name: str, env: str) -> int | None:
        """The deployment's revision alone (cheap; what a following job polls)."""
        with self._read() as conn:
            return conn.execute(sa.select(t.deployments.c.revision).where(
                t.deployments.c.name == name, t.deployments.c.env == env)).scalar()

    def history(self, name: str | None = None, env: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Audit entries, newest first."""
        q = sa.select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)
        if name is not None:
            q = q.where(t.audit_log.c.name == name)
        if env is not None:
            q = q.where(t.audit_log.c.env == env)
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [AuditEntry(id=r.id, at=_utc(r.at), actor=r.actor, action=r.action, name=r.name, env=r.env,
                           from_version=r.from_version, to_version=r.to_version, reason=r.reason,
                           features=r.features, revision=r.revision, detail=r.detail or {}) for r in rows]

    # -- writing -------------------------------------------------------------------------------

    def _audit(self, conn: sa.Connection, *, actor: str, action: str, name: str, reason: str, env: str | None = None,
               from_version: int | None = None, to_version: int | None = None, features: str | None = None,
               revision: int | None = None, detail: dict | None = None) -> None:
        conn.execute(t.audit_log.insert().values(
            at=_now(), actor=actor, action=action, name=name, env=env, from_version=from_version,
            to_version=to_version, features=features, revision=revision, reason=reason, detail=detail or {}))

    def _audit_alone(self, **kwargs) -> None:
        with self._tx() as conn:
            self._audit(conn, **kwargs)

    def _next_version(self, conn: sa.Connection, table: sa.Table, name: str) -> int:
        return (conn.execute(sa.select(sa.func.max(table.c.version)).where(table.c.name == name)).scalar() or 0) + 1

    def _insert_versioned(self, table: sa.Table, name: str, values: dict, audit: dict) -> int:
        """Insert the next version of ``name``; a concurrent registration of the same name makes the
        unique constraint fire and the next number is tried."""
        for _ in range(10):
            try:
                with self._tx() as conn:
                    version = self._next_version(conn, table, name)
                    conn.execute(table.insert().values(name=name, version=version, **values))
                    self._audit(conn, name=name, to_version=version, **audit)
                return version
            except sa.exc.IntegrityError:
                time.sleep(0.05)
        raise Conflict(f"could not allocate a version number for {name!r} (too many concurrent registrations)")

    def register_model(self, name: str, artifact_uri: str, *, actor: str, reason: str,
                       metadata: dict[str, Any] | None = None,
                       feature_set: str | FeatureSnapshot | FeatureSetRef | None = None) -> ModelVersion:
        """Register the artifact as the next version of ``name``: fetched, sha256 and size recorded,
        loaded with model_formats (an artifact that does not load is refused) and its input/output
        schema recorded. ``feature_set``: the snapshot name (its newest version's fingerprint),
        ``name@version``, or a FeatureSnapshot."""
        _need_reason(reason, actor)
        if not name or "/" in name or "@" in name:
            raise RegistryError(f"model name {name!r}: non-empty, without '/' or '@'")
        resolved = resolve(artifact_uri)
        fs_ref = self._feature_set_ref(feature_set)
        self.cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".register-", dir=self.cache.root) as tmp:
            local = download(resolved.uri, Path(tmp))
            sha, size = sha256_of(local)
            try:
                described = _describe_model(local)
            except ArtifactError as exc:
                self._audit_alone(actor=actor, action="register-refused", name=name, reason=reason,
                                  detail={"uri": resolved.uri, "sha256": sha, "error": str(exc)})
                raise
            target = self.cache.path(sha, local.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, target)
        meta = dict(metadata or {})
        meta.update(resolved.info)
        if described["metadata"]:
            meta.setdefault("artifact_metadata", described["metadata"])
        values = dict(uri=resolved.uri, sha256=sha, size=size, format=described["format"], filename=target.name,
                      input_schema=described["inputs"], output_schema=described["outputs"],
                      feature_set_name=fs_ref.name if fs_ref else None,
                      feature_set_fingerprint=fs_ref.fingerprint if fs_ref else None,
                      meta=meta, created_by=actor, created_at=_now(), retired=False)
        version = self._insert_versioned(t.model_versions, name, values, dict(
            actor=actor, action="register", reason=reason, detail={"uri": resolved.uri, "sha256": sha}))
        return self.model_version(name, version)

    def _feature_set_ref(self, feature_set) -> FeatureSetRef | None:
        if feature_set is None:
            return None
        if isinstance(feature_set, FeatureSetRef):
            return feature_set
        if isinstance(feature_set, FeatureSnapshot):
            return FeatureSetRef(feature_set.name, feature_set.schema_fingerprint)
        snap = self.snapshot(str(feature_set))
        return FeatureSetRef(snap.name, snap.schema_fingerprint)

    def register_snapshot(self, name: str, dataset_uri: str, *, key_column: str, actor: str,
                          reason: str) -> FeatureSnapshot:
        """Register the Parquet dataset at ``dataset_uri`` (a file or folder, local or remote) as the
        next snapshot of ``name``: row count, schema fingerprint and checksum recorded."""
        _need_reason(reason, actor)
        if not name or "/" in name or "@" in name:
            raise RegistryError(f"snapshot name {name!r}: non-empty, without '/' or '@'")
        from registry.artifacts import normalize_uri

        uri = normalize_uri(dataset_uri)
        table, checksum = read_dataset(uri)
        if key_column not in table.column_names:
            raise ArtifactError(f"{uri}: no key column {key_column!r} (columns: {', '.join(table.column_names[:20])})")
        import pyarrow.compute as pc

        distinct = pc.count_distinct(table.column(key_column)).as_py()
        if distinct != table.num_rows:
            raise ArtifactError(f"{uri}: key column {key_column!r} has {table.num_rows - distinct:,} duplicate keys")
        columns = schema_columns(table.schema)
        values = dict(uri=uri, row_count=table.num_rows, key_column=key_column,
                      schema_fingerprint=schema_fingerprint(columns), checksum=checksum, columns=columns,
                      created_by=actor, created_at=_now())
        version = self._insert_versioned(t.feature_snapshots, name, values, dict(
            actor=actor, action="publish", reason=reason, features=None, detail={"uri": uri, "checksum": checksum}))
        return self.snapshot(name, version)

    def check_compatibility(self, mv: ModelVersion, features: FeatureSnapshot | None,
                            event_fields: dict[str, str] | None) -> Compatibility:
        return check_inputs(mv.input_schema, features.columns if features else None,
                            features.key_column if features else None, event_fields)

    def promote(self, name: str, version: int | str, env: str, *, actor: str, reason: str, role: str = "champion",
                features: str | FeatureSnapshot | None = None, event_fields: str | list | dict | None = None,
                expected_revision: int | None = None, gate: Gate | None = None,
                share: float | None = None) -> Deployment:
        """Make ``name/version`` the champion of ``env`` (pinning ``features``: a snapshot, ``name@v``
        or a name for its newest version; default: the snapshot already pinned, else the newest of
        the model's feature set).

        Refused (``PolicyRefused``, written to the audit log) when the version is retired, the
        environment requires the version to have been champion in the previous one and it was not,
        or its inputs cannot be fed by the pinned snapshot plus the event fields (the policy's,
        extended by ``event_fields``). ``Conflict`` when the deployment changed since it was read
        (or is not at ``expected_revision``). With a ``gate``, the version's recorded comparison
        against the champion in ``env`` must meet it; the evidence goes to the audit log either way.

        ``role`` ``shadow`` (0..n per deployment) or ``canary`` (0..1, serving a ``share`` of the
        entities; share 0 ends it) adds a challenger beside the champion instead (see
        :meth:`_promote_challenger`)."""
        _need_reason(reason, actor)
        if role not in ROLES:
            raise RegistryError(f"role {role!r}: one of {', '.join(ROLES)}")
        if role != "champion":
            if features is not None or gate is not None:
                raise RegistryError(f"a {role} scores with the champion's feature snapshot and needs no gate: "
                                    "--features and the gate options are for champion promotions")
            return self._promote_challenger(name, version, env, role, share, actor=actor, reason=reason,
                                            event_fields=event_fields, expected_revision=expected_revision)
        environment = self.environment(env)
        mv = self.model_version(name, version)
        current = self.deployment(name, env)
        if expected_revision is not None and (current.revision if current else 0) != expected_revision:
            raise Conflict(f"{name} in {env} is at revision {current.revision if current else 0}, "
                           f"not {expected_revision}: someone else changed it; re-read and retry")
        snap = self._pick_features(mv, features, current)

        def refuse(why: str, **detail) -> None:
            self._audit_alone(actor=actor, action="promote-refused", name=name, env=env,
                              from_version=current.champion.version if current else None, to_version=mv.version,
                              features=snap.ref if snap else None, reason=reason, detail={"refusal": why, **detail})
            raise PolicyRefused(f"promote {mv.ref} to {env} refused: {why}")

        if mv.retired:
            refuse(f"version {mv.version} is retired")
        if environment.requires_previous_champion:
            previous = self._previous_env(environment)
            if not self._was_champion(name, mv.version, previous.name):
                refuse(f"{env} requires the version to have been champion in {previous.name}; "
                       f"{mv.ref} never was (promote it to {previous.name} first)")
        compat = self._check_inputs(mv, snap, environment, event_fields, refuse)
        gate_detail: dict[str, Any] = {}
        if gate is not None:
            evidence = self.comparison_evidence(name, env, mv.version)
            gate_detail = {"gate": _gate_dict(gate), "evidence": evidence}
            failed = gate.failures(evidence)
            if failed:
                refuse("the comparison does not meet the gate: " + "; ".join(failed), **gate_detail)
        if current and current.champion.version == mv.version and \
                (current.features.ref if current.features else None) == (snap.ref if snap else None):
            raise RegistryError(f"{mv.ref} is already champion in {env} with "
                                f"{snap.ref if snap else 'no feature snapshot'}; nothing to change")
        detail = {"unchecked_inputs": compat.unchecked} if compat.unchecked else {}
        return self._set_champion(name, env, mv, snap, current, actor=actor, reason=reason, action="promote",
                                  detail={**detail, **gate_detail})

    # --- challengers beside the champion: shadows and a canary ----------------------------------

    def _check_inputs(self, mv: ModelVersion, snap: FeatureSnapshot | None, environment: Environment,
                      event_fields, refuse) -> Compatibility:
        """``refuse(why, **detail)`` a version the deployment cannot feed: built for another feature
        set, or needing inputs the pinned snapshot plus the event fields (the environment's,
        extended by ``event_fields``) do not provide."""
        if mv.feature_set and snap and mv.feature_set.name != snap.name:
            refuse(f"the model was built for feature set {mv.feature_set.name!r}, the deployment pins {snap.ref}")
        events = environment.event_fields
        extra = parse_event_fields(event_fields)
        if extra is not None:
            events = {**(events or {}), **extra}
        compat = self.check_compatibility(mv, snap, events)
        if not compat.ok:
            refuse(compat.describe(), missing=compat.missing, mistyped=compat.mistyped)
        return compat

    def _promote_challenger(self, name: str, version: int | str, env: str, role: str, share: float | None, *,
                            actor: str, reason: str, event_fields=None,
                            expected_revision: int | None = None) -> Deployment:
        """Add ``name/version`` as a shadow of the deployment in ``env`` (scored beside the champion on
        every micro-batch, its predictions never served), or make it the canary (serving ``share`` of
        the entities, replacing any canary; ``share`` 0 ends the canary). The version must not be
        retired nor the champion, and the champion's pinned snapshot plus the event fields must feed
        it; a refusal goes to the audit log."""
        environment = self.environment(env)
        mv = self.model_version(name, version)
        current = self.deployment(name, env)
        if current is None:
            raise PolicyRefused(f"{role} {mv.ref} in {env} refused: {name} has no champion in {env} to run "
                                f"beside (promote a champion first)")
        if expected_revision is not None and current.revision != expected_revision:
            raise Conflict(f"{name} in {env} is at revision {current.revision}, not {expected_revision}: "
                           "someone else changed it; re-read and retry")
        if role == "canary":
            share = 0.1 if share is None else float(share)
            if not 0.0 <= share <= 1.0:
                raise RegistryError(f"canary share must be between 0 and 1, not {share}")
            if share == 0.0:
                if current.canary is None or current.canary.version != mv.version:
                    raise RegistryError(f"{mv.ref} is not the canary in {env}; nothing to end")
                return self.end_role(name, mv.version, env, "canary", actor=actor, reason=reason)
        elif share is not None:
            raise RegistryError("--share is for a canary; a shadow scores every event")
        action = f"promote-{role}"

        def refuse(why: str, **detail) -> None:
            self._audit_alone(actor=actor, action=f"{action}-refused", name=name, env=env,
                              from_version=current.champion.version, to_version=mv.version,
                              reason=reason, detail={"role": role, "refusal": why, **detail})
            raise PolicyRefused(f"{role} {mv.ref} in {env} refused: {why}")

        if mv.retired:
            refuse(f"version {mv.version} is retired")
        if mv.version == current.champion.version:
            refuse(f"{mv.ref} is the champion in {env}")
        snap = current.features
        compat = self._check_inputs(mv, snap, environment, event_fields, refuse)
        if role == "shadow" and any(s.version == mv.version for s in current.shadows):
            raise RegistryError(f"{mv.ref} is already a shadow in {env}; nothing to change")
        if role == "canary" and current.canary is not None and current.canary.version == mv.version \
                and current.canary_share == share:
            raise RegistryError(f"{mv.ref} is already the canary in {env} at share {share}; nothing to change")
        detail: dict[str, Any] = {"role": role}
        if role == "canary":
            detail["share"] = share
            if current.canary is not None and current.canary.version != mv.version:
                detail["replaced_canary"] = current.canary.version
        if compat.unchecked:
            detail["unchecked_inputs"] = compat.unchecked

        def change(conn: sa.Connection) -> None:
            r = t.deployment_roles
            # one role per version: a shadow made canary (or back) moves
            conn.execute(r.delete().where(r.c.name == name, r.c.env == env, r.c.version == mv.version))
            if role == "canary":
                conn.execute(r.delete().where(r.c.name == name, r.c.env == env, r.c.role == "canary"))
            conn.execute(r.insert().values(name=name, env=env, role=role, version=mv.version,
                                           share=share if role == "canary" else 1.0))

        return self._change_deployment(name, env, current, change, actor=actor, reason=reason, action=action,
                                       from_version=current.champion.version, to_version=mv.version, detail=detail)

    def end_role(self, name: str, version: int | str, env: str, role: str, *, actor: str, reason: str) -> Deployment:
        """End the shadow or canary ``name/version`` in ``env`` (the job stops scoring it within its
        follow interval); audit action ``end-shadow``/``end-canary``."""
        _need_reason(reason, actor)
        if role not in ("shadow", "canary"):
            raise RegistryError(f"only a shadow or canary role can be ended, not {role!r} (promote or roll back "
                                "to change the champion)")
        self.environment(env)
        mv = self.model_version(name, version)
        current = self.deployment(name, env)
        serving = [] if current is None else \
            [s.version for s in current.shadows] if role == "shadow" else \
            ([current.canary.version] if current.canary else [])
        if mv.version not in serving:
            raise RegistryError(f"{mv.ref} is not a {role} in {env} (the {role}s there: "
                                f"{', '.join(f'v{v}' for v in serving) or 'none'})")

        def change(conn: sa.Connection) -> None:
            r = t.deployment_roles
            conn.execute(r.delete().where(r.c.name == name, r.c.env == env, r.c.role == role,
                                          r.c.version == mv.version))

        return self._change_deployment(name, env, current, change, actor=actor, reason=reason,
                                       action=f"end-{role}", from_version=mv.version, to_version=None,
                                       detail={"role": role})

    def _change_deployment(self, name: str, env: str, current: Deployment, change, *, actor: str, reason: str,
                           action: str, from_version: int | None, to_version: int | None,
                           detail: dict) -> Deployment:
        """Compare-and-set: ``change(conn)`` and the next revision of the deployment, in one
        transaction with its audit entry (and, on PostgreSQL, the NOTIFY followers wait on)."""
        revision = current.revision + 1
        lost = Conflict(f"{name} in {env} changed while this {action} was being decided (it was at revision "
                        f"{current.revision}); re-read with `registry show` and retry")
        with self._tx() as conn:
            done = conn.execute(t.deployments.update().where(
                t.deployments.c.name == name, t.deployments.c.env == env,
                t.deployments.c.revision == current.revision).values(revision=revision, updated_by=actor,
                                                                     updated_at=_now()))
            if done.rowcount != 1:
                raise lost
            change(conn)
            self._audit(conn, actor=actor, action=action, name=name, env=env, from_version=from_version,
                        to_version=to_version, features=current.features.ref if current.features else None,
                        revision=revision, reason=reason, detail=detail)
            self._notify(conn, name, env, revision)
            return self._deployment(conn, name, env)

    def _notify(self, conn: sa.Connection, name: str, env: str, revision: int) -> None:
        if self.backend == "postgresql":
            conn.execute(sa.text("SELECT pg_notify(:channel, :payload)"), {
                "channel": self._channel, "payload": json.dumps({"name": name, "env": env, "revision": revision})})

    # --- the in-stream comparison of challengers (shadow, canary) with the champion -------------

    def record_comparison(self, name: str, env: str, summary: dict[str, Any], *, role: str = "shadow") -> bool:
        """Store one window of a champion/challenger comparison (``WindowComparison.summary()``,
        whose ``champion``/``challenger`` are ``name@version``). A window already stored (a replay
        after a restart) is left as it is: False. A replay's windows (``streamscore registry
        replay``) have ``scorer`` = ``REPLAY_SCORER`` (-1; a live scorer is a subtask, >= 0) and
        ``source`` = ``replay``: they never collide with the live windows of the same time."""
        if role not in ROLES or role == "champion":
            raise RegistryError(f"a comparison's challenger role is shadow or canary, not {role!r}")
        champion, challenger = (_version_of(summary[k], name, k) for k in ("champion", "challenger"))
        values = dict(name=name, env=env, champion_version=champion, challenger_version=challenger, role=role,
                      window_start_ms=int(summary["window_start_ms"]), scorer=int(summary.get("scorer") or 0),
                      compared=int(summary["compared"]),
                      summary=summary, recorded_at=_now())
        try:
            with self._tx() as conn:
                conn.execute(t.comparisons.insert().values(**values))
        except sa.exc.IntegrityError:
            return False
        return True

    def comparisons(self, name: str, env: str, challenger_version: int | None = None,
                    source: str | None = None) -> list[dict[str, Any]]:
        """The stored comparison windows of ``name`` in ``env`` (of one challenger), oldest first;
        ``source``: ``live`` (scored beside the serving champion) or ``replay`` only (default both)."""
        c = t.comparisons.c
        query = sa.select(t.comparisons.c.summary).where(c.name == name, c.env == env)
        if challenger_version is not None:
            query = query.where(c.challenger_version == int(challenger_version))
        if source == "live":
            query = query.where(c.scorer != REPLAY_SCORER)
        elif source == "replay":
            query = query.where(c.scorer == REPLAY_SCORER)
        elif source is not None:
            raise RegistryError(f"comparison source {source!r}: live or replay")
        with self._read() as conn:
            return [row.summary for row in conn.execute(query.order_by(c.window_start_ms, c.id))]

    def comparison_evidence(self, name: str, env: str, challenger_version: int) -> dict[str, Any]:
        """The comparison of one challenger against the champion it was compared with, all
        recorded live windows taken together (``compared``, ``agreement``, ``psi``, ``windows``, …).
        Replayed windows are not evidence for a gate: a replay scores the past's traffic beside
        the past's champion and feature snapshot, not the traffic and champion the promotion
        would change (``registry report`` shows them, apart)."""
        from operators.experiments import merge_windows

        windows = self.comparisons(name, env, challenger_version, source="live")
        if not windows:
            return {"windows": 0, "compared": 0, "agreement": None, "psi": None}
        merged = merge_windows(windows)
        return {k: merged[k] for k in ("champion", "challenger", "windows", "compared", "agreement",
                                       "score_diff_mean", "psi")}

    def champion_changes(self, name: str, env: str) -> list[AuditEntry]:
        """Every change of the deployment's champion or feature snapshot (promote, rollback),
        oldest first: ``at``, ``to_version`` (the champion from then on) and ``features``."""
        with self._read() as conn:
            rows = conn.execute(sa.select(t.audit_log).where(
                t.audit_log.c.name == name, t.audit_log.c.env == env,
                t.audit_log.c.action.in_(("promote", "rollback"))).order_by(t.audit_log.c.id)).all()
        return [AuditEntry(id=r.id, at=_utc(r.at), actor=r.actor, action=r.action, name=r.name, env=r.env,
                           from_version=r.from_version, to_version=r.to_version, reason=r.reason,
                           features=r.features, revision=r.revision, detail=r.detail or {}) for r in rows]

    def champion_during(self, name: str, env: str, start: datetime, end: datetime) -> AuditEntry:
        """The change that made the champion (and feature snapshot) serving ``name`` in ``env``
        from ``start`` to ``end`` (its ``to_version`` and ``features``). ``PolicyRefused`` when
        nothing served yet at ``start`` or the champion or snapshot changed in between (a replay
        of that time would mix two deployments)."""
        changes = self.champion_changes(name, env)
        before = [c for c in changes if c.at <= start]
        if not before:
            first = f"the first promotion was at {changes[0].at.isoformat()}" if changes else "nothing was ever promoted"
            raise PolicyRefused(f"no champion of {name} in {env} at {start.isoformat()}: {first}")
        inside = [c for c in changes if start < c.at <= end]
        if inside:
            c = inside[0]
            raise PolicyRefused(f"the champion or feature snapshot of {name} in {env} changed within "
                                f"{start.isoformat()} .. {end.isoformat()}: {c.action} to v{c.to_version}"
                                f"{' with ' + c.features if c.features else ''} at {c.at.isoformat()}")
        return before[-1]

    def _pick_features(self, mv: ModelVersion, features, current: Deployment | None) -> FeatureSnapshot | None:
        if isinstance(features, FeatureSnapshot):
            return features
        if features is not None:
            return self.snapshot(str(features))
        if current is not None and current.features is not None:
            return current.features
        if mv.feature_set is not None:
            return self.snapshot(mv.feature_set.name)
        return None

    def _previous_env(self, environment: Environment) -> Environment:
        before = [e for e in self.environments() if e.position < environment.position]
        if not before:
            raise RegistryError(f"environment {environment.name!r} requires a previous champion but is the first one")
        return before[-1]

    def _was_champion(self, name: str, version: int, env: str) -> bool:
        with self._read() as conn:
            hit = conn.execute(sa.select(t.audit_log.c.id).where(
                t.audit_log.c.name == name, t.audit_log.c.env == env, t.audit_log.c.to_version == version,
                t.audit_log.c.action.in_(("promote", "rollback"))).limit(1)).first()
        return hit is not None

    def _set_champion(self, name: str, env: str, mv: ModelVersion, snap: FeatureSnapshot | None,
                      current: Deployment | None, *, actor: str, reason: str, action: str, detail: dict) -> Deployment:
        """Compare-and-set the deployment from ``current`` to champion ``mv`` with ``snap``."""
        now = _now()
        revision = (current.revision if current else 0) + 1
        fields = dict(revision=revision, features_name=snap.name if snap else None,
                      features_version=snap.version if snap else None, updated_by=actor, updated_at=now)
        lost = Conflict(f"{name} in {env} changed while this {action} was being decided (it was at revision "
                        f"{current.revision if current else 0}); re-read with `registry show` and retry")
        try:
            with self._tx() as conn:
                if current is None:
                    conn.execute(t.deployments.insert().values(name=name, env=env, **fields))
                else:
                    done = conn.execute(t.deployments.update().where(
                        t.deployments.c.name == name, t.deployments.c.env == env,
                        t.deployments.c.revision == current.revision).values(**fields))
                    if done.rowcount != 1:
                        raise lost
                    # the old champion's row, and the new one's shadow/canary row (a challenger promoted)
                    r = t.deployment_roles
                    conn.execute(r.delete().where(r.c.name == name, r.c.env == env,
                                                  sa.or_(r.c.role == "champion", r.c.version == mv.version)))
                conn.execute(t.deployment_roles.insert().values(name=name, env=env, role="champion",
                                                                version=mv.version, share=1.0))
                self._audit(conn, actor=actor, action=action, name=name, env=env,
                            from_version=current.champion.version if current else None, to_version=mv.version,
                            features=snap.ref if snap else None, revision=revision, reason=reason, detail=detail)
                self._notify(conn, name, env, revision)
                result = self._deployment(conn, name, env)   # this change's state, not a later one's
        except sa.exc.IntegrityError as exc:   # a concurrent first promotion inserted the row first
            raise lost from exc
        return result

    def rollback(self, name: str, env: str, *, actor: str, reason: str) -> Deployment:
        """Return ``env`` to the champion (and snapshot) it had before the current one."""
        _need_reason(reason, actor)
        self.environment(env)
        current = self.deployment(name, env)
        if current is None:
            deployed = [f"{d.name}@{d.env}" for d in self.deployments()]
            raise NotFound(f"deployment of {name} in", env, deployed)
        stack = self._champion_stack(name, env)
        if len(stack) < 2:
            raise PolicyRefused(f"rollback of {name} in {env} refused: there is no previous champion "
                                f"(v{current.champion.version} is the first)")
        version, features = stack[-2]
        mv = self.model_version(name, version)
        if mv.retired:
            raise PolicyRefused(f"rollback of {name} in {env} refused: the previous champion v{version} is retired")
        snap = self.snapshot(features) if features else None
        return self._set_champion(name, env, mv, snap, current, actor=actor, reason=reason, action="rollback",
                                  detail={"rolled_back": current.champion.version})

    def _champion_stack(self, name: str, env: str) -> list[tuple[int, str | None]]:
        """Replay of the deployment's promotions (push) and rollbacks (pop)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(t.audit_log.c.action, t.audit_log.c.to_version, t.audit_log.c.features)
                                .where(t.audit_log.c.name == name, t.audit_log.c.env == env,
                                       t.audit_log.c.action.in_(("promote", "rollback")))
                                .order_by(t.audit_log.c.id)).all()
        stack: list[tuple[int, str | None]] = []
        for action, version, features in rows:
            if action == "rollback" and stack:
                stack.pop()
                if stack and stack[-1][0] == version:
                    continue
            stack.append((version, features))
        return stack

    def retire(self, name: str, version: int | str, *, actor: str, reason: str) -> ModelVersion:
        """Mark a version retired: it can no longer be promoted. A version serving somewhere is
        refused (promote another one there first)."""
        _need_reason(reason, actor)
        mv = self.model_version(name, version)
        if mv.retired:
            raise RegistryError(f"{mv.ref} is already retired")
        with self._tx() as conn:
            serving = conn.execute(sa.select(t.deployment_roles.c.env, t.deployment_roles.c.role).where(
                t.deployment_roles.c.name == name, t.deployment_roles.c.version == mv.version)).all()
            if serving:
                where = ", ".join(f"{r.role} in {r.env}" for r in serving)
                raise PolicyRefused(f"retire {mv.ref} refused: it is serving ({where}); promote another version first")
            conn.execute(t.model_versions.update().where(t.model_versions.c.name == name,
                                                          t.model_versions.c.version == mv.version).values(retired=True))
            self._audit(conn, actor=actor, action="retire", name=name, from_version=mv.version, reason=reason)
        return self.model_version(name, mv.version)

    def record_refusal(self, name: str, env: str, version: int, *, actor: str, reason: str,
                       detail: dict | None = None) -> None:
        """A running job refused to serve ``version`` (it failed to load or validate): into the audit log."""
        _need_reason(reason, actor)
        current = self.deployment(name, env)
        self._audit_alone(actor=actor, action="refused-by-job", name=name, env=env,
                          from_version=None, to_version=int(version), reason=reason,
                          revision=current.revision if current else None, detail=detail or {})

    # -- artifacts -----------------------------------------------------------------------------

    def fetch_model(self, mv: ModelVersion, cache_dir: str | os.PathLike | None = None) -> Path:
        """A local, sha256-verified copy of the version's artifact (per-host cache)."""
        cache = ModelCache(Path(cache_dir)) if cache_dir else self.cache
        return cache.fetch(mv.uri, mv.sha256, mv.size, mv.filename)

    def fetch_snapshot(self, fs: FeatureSnapshot):
        """The snapshot's table, read from durable storage; its checksum and row count verified."""
        table, checksum = read_dataset(fs.uri)
        if checksum != fs.checksum or table.num_rows != fs.row_count:
            raise ArtifactError(f"{fs.ref} at {fs.uri}: checksum/rows mismatch: registered {fs.checksum[:16]}… "
                                f"({fs.row_count:,} rows), read {checksum[:16]}… ({table.num_rows:,} rows); refused")
        return table

    # -- following -----------------------------------------------------------------------------

    def wait_for_change(self, name: str, env: str, timeout_s: float, *, since_revision: int | None = None,
                        poll_interval_s: float = 0.5) -> bool:
        """Block until the deployment's revision differs from ``since_revision`` (default: its
        revision now) or ``timeout_s`` passes; True when it changed. PostgreSQL: LISTEN/NOTIFY
        (woken by the promotion's commit); SQLite: polling every ``poll_interval_s``."""
        start = self.revision(name, env) if since_revision is None else since_revision
        deadline = time.monotonic() + timeout_s
        if self.backend == "postgresql":
            return self._listen(name, env, start, deadline)
        while True:
            if self.revision(name, env) != start:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll_interval_s, left))

    def _listen(self, name: str, env: str, start: int | None, deadline: float) -> bool:
        import psycopg

        try:
            with psycopg.connect(self._pg_dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'LISTEN "{self._channel}"')
                if self.revision(name, env) != start:     # changed before LISTEN took effect
                    return True
                while (left := deadline - time.monotonic()) > 0:
                    for note in conn.notifies(timeout=left, stop_after=1):
                        try:
                            payload = json.loads(note.payload)
                        except ValueError:
                            continue
                        if payload.get("name") == name and payload.get("env") == env \
                                and payload.get("revision") != start:
                            return True
                return self.revision(name, env) != start
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(f"registry database {self._safe_uri()}: {' '.join(str(exc).split())[:300]}") from exc


def _version_of(ref: str, name: str, what: str) -> int:
    """``fraud@3`` → 3 (the comparison's model must be the deployment's)."""
    model, _, version = str(ref).rpartition("@")
    if model != name or not version.isdigit():
        raise RegistryError(f"comparison {what} {ref!r} is not a version of {name} (expected {name}@<version>)")
    return int(version)


def _gate_dict(gate: Gate) -> dict[str, Any]:
    return {"min_agreement": gate.min_agreement, "min_compared": gate.min_compared, "max_psi": gate.max_psi}


def _describe_model(path: Path) -> dict:
    """format, inputs, outputs and metadata of a model file, via model_formats (ArtifactError if it
    does not load)."""
    from model_formats import ModelLoadError, load_model

    try:
        model = load_model(path)
    except (ModelLoadError, OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path.name}: the model does not load: {' '.join(str(exc).split())[:300]}") from exc
    except Exception as exc:  # noqa: BLE001 - runtimes raise their own errors on corrupt files
        raise ArtifactError(f"{path.name}: the model does not load: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}") from exc
    try:
        d = model.describe()
    finally:
        model.close()
    return {"format": d["format"], "inputs": d["inputs"], "outputs": d["outputs"],
            "metadata": {k: str(v) for k, v in (d.get("metadata") or {}).items()}}
