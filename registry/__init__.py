"""Model and feature registry: versions, snapshots, environments, promotion, rollback, audit.

    from registry import open_registry
    reg = open_registry("sqlite:////abs/path/registry.db")   # or postgresql://user@host/db?schema=NAME
    reg.init()
    mv = reg.register_model("fraud", "models/fraud.onnx", actor="ana", reason="first model")
    reg.promote("fraud", mv.version, "integration", actor="ana", reason="smoke test")
    reg.deployment("fraud", "integration").champion.sha256

Imports ``model_formats`` (schemas at register time) and pyarrow filesystems; never an engine.
"""
from registry.core import (  # noqa: F401
    DEFAULT_ENVIRONMENTS, REPLAY_SCORER, Registry, default_actor, default_registry_uri, open_registry,
)
from registry.errors import (  # noqa: F401
    ArtifactError, Conflict, NotFound, PolicyRefused, RegistryError, RegistryUnavailable,
)
from registry.records import (  # noqa: F401
    AuditEntry, Gate, Deployment, Environment, FeatureSetRef, FeatureSnapshot, ModelVersion,
)
from registry.snapshots import write_dataset  # noqa: F401

__all__ = [
    "open_registry", "Registry", "ModelVersion", "FeatureSnapshot", "Deployment", "AuditEntry", "Environment",
    "FeatureSetRef", "RegistryError", "NotFound", "Conflict", "PolicyRefused", "ArtifactError",
    "RegistryUnavailable", "DEFAULT_ENVIRONMENTS", "default_registry_uri", "default_actor", "write_dataset", "REPLAY_SCORER",
]
