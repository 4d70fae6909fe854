"""Store URIs and reader options (missing-key policy, refresh, unavailability)."""
from __future__ import annotations

import dataclasses
import enum
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

# Dead-letter reasons the operators attach to events.
from connectors.dead_letter import FEATURE_STORE_UNAVAILABLE as REASON_UNAVAILABLE  # noqa: F401
from connectors.dead_letter import UNKNOWN_ENTITY as REASON_MISSING  # noqa: F401


class MissingPolicy(str, enum.Enum):
    """What a lookup does for keys that are not in the store."""
    DEAD_LETTER = "dead_letter"   # row is null, found=False: the operator dead-letters the event
    NULLS = "nulls"               # row is null, the event is scored anyway
    DEFAULTS = "defaults"         # row holds the per-feature defaults, the event is scored


class UnavailablePolicy(str, enum.Enum):
    """What a lookup does when the store cannot be reached."""
    DEAD_LETTER = "dead_letter"   # raise FeatureStoreUnavailable at once (after one quick retry)
    WAIT = "wait"                 # retry with back-off up to ``wait_timeout_s``, then raise


@dataclass
class StoreOptions:
    """Reader options; every field can also come from the URI query (``?missing=nulls``)."""
    name: str = "features"                 # store name (plasma/redis) or table (postgres)
    missing: MissingPolicy = MissingPolicy.DEAD_LETTER
    defaults: dict[str, Any] = field(default_factory=dict)  # per-feature defaults (policy DEFAULTS)
    refresh_interval_s: float = 1.0        # bound on the time to switch to a new version
    unavailable: UnavailablePolicy = UnavailablePolicy.DEAD_LETTER
    wait_timeout_s: float = 30.0           # policy WAIT: longest a lookup waits for the store
    stale_grace_s: float = 60.0            # shared memory: keep serving the held snapshot this long
                                           # after the store went away (0 = strict)
    timeout_s: float = 5.0                 # any single network / IPC operation
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    prefault: bool = True                  # shared memory: map every page of a version when it is
                                           # opened (no page fault on a row's first lookup)

    @classmethod
    def build(cls, params: dict[str, str] | None = None, **overrides: Any) -> "StoreOptions":
        """Options from URI query parameters, then keyword overrides (which win)."""
        values: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        defaults: dict[str, Any] = {}
        for key, raw in (params or {}).items():
            if key.startswith("default."):
                defaults[key[len("default."):]] = float(raw)
            elif key == "table":
                values["name"] = raw
            elif key in fields:
                values[key] = raw
        values.update({k: v for k, v in overrides.items() if k != "table"})
        if "table" in overrides:
            values["name"] = overrides["table"]
        unknown = set(values) - set(fields)
        if unknown:
            raise TypeError(f"unknown feature-store options: {sorted(unknown)}")
        opts = cls(**values)
        opts.defaults = {**defaults, **(opts.defaults or {})}
        opts.missing = MissingPolicy(opts.missing)
        opts.unavailable = UnavailablePolicy(opts.unavailable)
        for name in ("refresh_interval_s", "wait_timeout_s", "stale_grace_s", "timeout_s",
                     "backoff_initial_s", "backoff_max_s"):
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


SCHEMES = ("plasma", "arrow-shm", "redis", "postgresql", "postgres")


def parse_uri(uri: str) -> StoreURI:
    """Split a store URI; raises ValueError on an unknown scheme."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"unknown feature-store scheme {parts.scheme!r} in {uri!r}; "
                         f"expected one of {', '.join(SCHEMES)}")
    params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return StoreURI(parts.scheme, parts.netloc, parts.path, params, uri)
