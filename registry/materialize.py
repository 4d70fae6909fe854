"""Per-host feature materialization: a host's shared-memory store (Plasma, arrow-shm) is loaded
from the registry snapshot a deployment pins, once per host however many workers ask.

Every scoring worker that follows a deployment calls :meth:`HostMaterializer.ensure` when the
pinned snapshot changes (and when it starts). The first to take the host's lock (a file lock
keyed by the store's location) fetches the snapshot from durable storage (checksum checked by
``fetch_snapshot``) and publishes it into the store under the snapshot's ``name@version``; the
others wait on the lock and then find it served. Readers switch atomically at their next refresh
(the store's versioning) and the old version is freed once its last reader lets go. A job
starting on a host with an empty store so finds its features without ``features load``.

A snapshot that does not fit is refused (:class:`SnapshotRefused`, a ``PolicyRefused``): its
schema fingerprint differs from the feature set the champion was trained on, its key column
or its features differ from those the store serves now (jobs on this host were built for those).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from connectors.feature_store import FeatureStoreError, FeatureStoreUnavailable, load_table, open_store

log = logging.getLogger(__name__)


def _lock_dir() -> Path:
    base = os.environ.get("STREAMSCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "streamscore")
    return Path(base) / "locks"


def store_location(store_uri: str) -> str:
    """The part of a store URI that names one store on this host (scheme, socket/dir, name)."""
    from connectors.feature_store import StoreOptions, parse_uri

    u = parse_uri(store_uri)
    return f"{u.scheme}://{u.netloc}{u.path}?name={StoreOptions.build(u.params).name}"


@contextlib.contextmanager
def host_lock(store_uri: str) -> Iterator[Path]:
    """An exclusive lock for this host's store at ``store_uri`` (all processes on the host)."""
    folder = _lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"materialize-{hashlib.sha256(store_location(store_uri).encode()).hexdigest()[:24]}.lock"
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def served(store_uri: str) -> tuple[str | None, str | None]:
    """``name@version`` and key column the host's store serves now (None, None: nothing yet)."""
    try:
        store = open_store(store_uri, stale_grace_s=0, prefault=False, refresh_interval_s=0)
    except FeatureStoreUnavailable:
        return None, None
    try:
        return store.lineage, store.key
    except FeatureStoreUnavailable:
        return None, None
    finally:
        store.close()


def _refused(message: str) -> Exception:
    from registry import PolicyRefused

    return PolicyRefused(message)


def check_fits(snapshot: Any, champion: Any | None) -> None:
    """Refuse a snapshot the champion cannot use (raises PolicyRefused naming the mismatch)."""
    if champion is None:
        return
    wanted = getattr(champion, "feature_set", None)
    if wanted is not None and wanted.fingerprint and wanted.fingerprint != snapshot.schema_fingerprint:
        raise _refused(f"feature snapshot {snapshot.name}@{snapshot.version} has schema fingerprint "
                       f"{snapshot.schema_fingerprint[:12]}, but {champion.name} version {champion.version} was "
                       f"trained on feature set {wanted.name} with fingerprint {wanted.fingerprint[:12]}")


class HostMaterializer:
    """Keeps this host's store at ``store_uri`` serving a deployment's pinned snapshot."""

    def __init__(self, store_uri: str, registry: Any) -> None:
        """``registry``: a URI or an open ``Registry``."""
        self.store_uri = store_uri
        self.registry_uri = registry if isinstance(registry, str) else None
        self._reg = registry if not isinstance(registry, str) else None
        self.loads = 0          # snapshots this process published (0 when another worker did it)

    def _registry(self):
        if self._reg is None:
            from registry import open_registry

            self._reg = open_registry(self.registry_uri)
        return self._reg

    def ensure(self, deployment: Any) -> str:
        """Make the host's store serve ``deployment.features`` (a FeatureSnapshot); returns its
        ``name@version``. Raises PolicyRefused for a snapshot that does not fit (nothing changes)."""
        snapshot = deployment.features
        ref = f"{snapshot.name}@{snapshot.version}"
        check_fits(snapshot, deployment.champion)
        with host_lock(self.store_uri):
            lineage, key = served(self.store_uri)
            if lineage == ref:
                log.info("feature store %s already serves %s", self.store_uri, ref)
                return ref
            if key is not None and key != snapshot.key_column:
                raise _refused(f"feature snapshot {ref} is keyed by {snapshot.key_column!r}, the store at "
                               f"{self.store_uri} serves features keyed by {key!r}")
            table = self._registry().fetch_snapshot(snapshot)
            try:
                version = load_table(self.store_uri, table, key=snapshot.key_column, lineage=ref)
            except FeatureStoreError as exc:
                raise _refused(f"feature snapshot {ref} refused by the host store: {exc}") from exc
            self.loads += 1
            log.info("feature store %s: materialized %s (%d rows) as store version %s, was %s",
                     self.store_uri, ref, table.num_rows, version, lineage or "empty")
            return ref

