"""The registry's records as plain, immutable dataclasses (what the API returns)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

ROLES = ("champion", "shadow", "canary")


@dataclass(frozen=True)
class FeatureSetRef:
    """The feature set a model was trained on: a snapshot name and its schema fingerprint."""

    name: str
    fingerprint: str | None = None

    def __str__(self) -> str:
        return f"{self.name}#{self.fingerprint[:12]}" if self.fingerprint else self.name


@dataclass(frozen=True)
class ModelVersion:
    """One immutable registered model artifact."""

    name: str
    version: int
    uri: str                                 # where the bytes come from (models:/x@alias resolved to models:/x/N)
    sha256: str
    size: int
    format: str                              # "onnx" | "pmml" | "sklearn"
    filename: str                            # the artifact's file name (its suffix picks the runtime)
    input_schema: list[dict[str, Any]]       # model_formats FieldSpec dicts, in the model's order
    output_schema: list[dict[str, Any]]
    feature_set: FeatureSetRef | None
    metadata: dict[str, Any]
    created_by: str
    created_at: datetime
    retired: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        return d


@dataclass(frozen=True)
class FeatureSnapshot:
    """One immutable published feature table (Parquet in durable storage)."""

    name: str
    version: int
    uri: str
    row_count: int
    key_column: str
    schema_fingerprint: str
    checksum: str
    columns: list[dict[str, str]]            # [{"name", "type"}] in table order, key included
    created_by: str = ""
    created_at: datetime | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d


@dataclass(frozen=True)
class Deployment:
    """What one model serves in one environment. ``revision`` goes up by one on every change:
    a job compares it with the one it serves."""

    name: str
    env: str
    revision: int
    champion: ModelVersion
    features: FeatureSnapshot | None = None
    shadows: list[ModelVersion] = field(default_factory=list)
    canary: ModelVersion | None = None
    canary_share: float = 0.0
    updated_by: str = ""
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "env": self.env, "revision": self.revision,
                "champion": self.champion.to_dict(),
                "features": self.features.to_dict() if self.features else None,
                "shadows": [m.to_dict() for m in self.shadows],
                "canary": self.canary.to_dict() if self.canary else None, "canary_share": self.canary_share,
                "updated_by": self.updated_by,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


@dataclass(frozen=True)
class AuditEntry:
    """One line of the append-only audit log."""

    id: int
    at: datetime
    actor: str
    action: str                     # register | publish | promote | rollback | retire | refused | refused-by-job
    name: str
    env: str | None
    from_version: int | None
    to_version: int | None
    reason: str
    features: str | None = None     # snapshot name@version pinned by the change
    revision: int | None = None     # the deployment revision the change produced
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = self.at.isoformat()
        return d


@dataclass(frozen=True)
class Environment:
    """A deployment environment and its promotion policy."""

    name: str
    position: int
    requires_previous_champion: bool = False
    event_fields: dict[str, str] | None = None   # field -> dtype ("any" when unknown); None: not declared
