"""Store URIs and reader options (refresh, timeouts, shared-memory behaviour).

What a pipeline does with an entity the store does not know is not a store option: stores
answer ``(features, found)`` and ``operators.steps.MissingEntityPolicy`` decides. Retrying an
unavailable store is not a store option either: stores fail fast, ``connectors.retry`` decides.
"""
from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

SERVER_PARAMS = {"memory"}   # read by `streamscore features serve` (the Plasma server), not by readers
MOVED = {  # options that stores no longer take, and where they went
    "missing": "features.on_missing in the job config (operators.steps.MissingEntityPolicy)",
    "default": "features.defaults in the job config (operators.steps.MissingEntityPolicy)",
    "defaults": "features.defaults in the job config (operators.steps.MissingEntityPolicy)",
    "unavailable": "features.retries in the job config (connectors.retry.RetryPolicy)",
    "wait_timeout_s": "features.retries in the job config (connectors.retry.RetryPolicy)",
}


@dataclass
class StoreOptions:
    """Reader options; every field can also come from the URI query (``?refresh_interval_s=0.5``)."""
    name: str = "features"                 # store name (plasma/redis) or table (postgres)
    refresh_interval_s: float = 1.0        # bound on the time to switch to a new version
    stale_grace_s: float = 60.0            # shared memory: keep serving the held snapshot this long
                                           # after the store went away (0 = strict)
    timeout_s: float = 5.0                 # any single network / IPC operation
    prefault: bool = True                  # shared memory: map every page of a version when it is
                                           # opened (no page fault on a row's first lookup)

    @classmethod
    def build(cls, params: dict[str, str] | None = None, **overrides: Any) -> "StoreOptions":
        """Options from URI query parameters, then keyword overrides (which win). An unknown
        option is an error naming it."""
        values: dict[str, Any] = {}
        for key, raw in (params or {}).items():
            if key not in SERVER_PARAMS:
                values["name" if key == "table" else key] = raw
        values.update({("name" if k == "table" else k): v for k, v in overrides.items()})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            moved = [f"{k!r} is now {MOVED[k.split('.')[0]]}" for k in unknown if k.split(".")[0] in MOVED]
            raise ValueError(f"unknown feature-store options: {unknown}"
                             + (f" ({'; '.join(moved)})" if moved else f" (known: {sorted(fields)})"))
        opts = cls(**values)
        for name in ("refresh_interval_s", "stale_grace_s", "timeout_s"):
            setattr(opts, name, float(getattr(opts, name)))
        if isinstance(opts.prefault, str):
            opts.prefault = opts.prefault.strip().lower() not in ("0", "false", "no", "off", "")
        return opts


@dataclass(frozen=True)
class StoreURI:
    """A parsed store URI: ``scheme://netloc/path?query``."""
    scheme: str
    netloc: str
    path: str
    params: dict[str, str]
    raw: str

    @property
    def base(self) -> str:
        """The URI without its query string (what client libraries get)."""
        return urllib.parse.urlunsplit((self.scheme, self.netloc, self.path, "", ""))


BACKENDS = {   # URI scheme -> the module with its open_reader() and publish()
    "plasma": "connectors.feature_store.plasma_store",
    "arrow-shm": "connectors.feature_store.arrow_shm_store",
    "redis": "connectors.feature_store.redis_store",
    "postgresql": "connectors.feature_store.postgres_store",
    "postgres": "connectors.feature_store.postgres_store",
}


SHARED_MEMORY_SCHEMES = ("plasma", "arrow-shm")   # readers map the snapshot: a lookup takes microseconds


def is_shared_memory(uri: str) -> bool:
    """Whether the store at ``uri`` is read from shared memory on this host (no network hop)."""
    return urllib.parse.urlsplit(uri).scheme in SHARED_MEMORY_SCHEMES


ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_environment(uri: str) -> str:
    """``${NAME}`` in a store URI replaced by the variable from the environment of the process that
    opens the store: one job configuration, a store per host (e.g.
    ``plasma://${STREAMSCORE_PLASMA_SOCKET}?name=features``, each TaskManager started with its own
    socket). An unset variable is an error naming it, never an empty string."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"the feature-store URI {uri!r} names ${{{name}}}, which is not set in this "
                             f"process's environment (on a cluster: set it for every TaskManager)")
        return os.environ[name]
    return ENV_REFERENCE.sub(value, uri)


def parse_uri(uri: str) -> StoreURI:
    """Split a store URI (``${NAME}`` expanded first, see ``expand_environment``); raises
    ValueError on an unknown scheme or an unset variable."""
    uri = expand_environment(uri)
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in BACKENDS:
        raise ValueError(f"unknown feature-store scheme {parts.scheme!r} in {uri!r}; "
                         f"expected one of {', '.join(BACKENDS)}")
    params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return StoreURI(parts.scheme, parts.netloc, parts.path, params, uri)
