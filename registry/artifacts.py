"""Artifact bytes: where they come from (local path, file://, s3://, hdfs://, models:/ via MLflow),
their sha256, and the per-host cache ``$STREAMSCORE_CACHE/registry/<sha256>/<file>``.

Every fetch verifies sha256 and size against the registered ones, a cached copy included: a file
changed under the cache or at its source is an ``ArtifactError``, never a silently different model.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from registry.errors import ArtifactError

CHUNK = 1 << 20
MODEL_SUFFIXES = (".onnx", ".pmml", ".xml", ".skops")   # pickles are not registered: they run code on load


def default_cache_dir() -> Path:
    """``$STREAMSCORE_CACHE`` (default ``~/.cache/streamscore``)."""
    base = os.environ.get("STREAMSCORE_CACHE") or \
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamscore"
    return Path(base)


def sha256_of(path: Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith("models:/")


def normalize_uri(uri: str) -> str:
    """A local path becomes an absolute path; URIs stay as they are."""
    if "://" in uri or is_mlflow_uri(uri):
        return uri
    return str(Path(uri).expanduser().resolve())


@dataclass(frozen=True)
class Resolved:
    """An artifact URI made immutable (``models:/x@alias`` -> ``models:/x/N``) and what MLflow said."""

    uri: str
    info: dict


def resolve(uri: str) -> Resolved:
    """Pin a moving reference: an MLflow alias or ``latest`` becomes a concrete version."""
    if not is_mlflow_uri(uri):
        return Resolved(normalize_uri(uri), {})
    client = _mlflow_client()
    rest = uri[len("models:/"):].strip("/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
            info = {"mlflow_alias": alias}
        else:
            name, _, ver = rest.partition("/")
            if not ver or "/" in ver:
                raise ArtifactError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
            if ver == "latest":
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise ArtifactError(f"{uri}: MLflow has no versions of {name!r}")
                mv = max(versions, key=lambda v: int(v.version))
            else:
                mv = client.get_model_version(name, ver)
            info = {}
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow raises MlflowException / RestException / connection errors
        raise ArtifactError(f"{uri}: MLflow could not resolve it: {' '.join(str(exc).split())[:300]}") from exc
    info.update({"mlflow_model": mv.name, "mlflow_version": str(mv.version), "mlflow_run_id": mv.run_id,
                 "mlflow_source": mv.source, "mlflow_tracking_uri": _tracking_uri()})
    return Resolved(f"models:/{mv.name}/{mv.version}", info)


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _mlflow_client():
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise ArtifactError("models:/ URIs need the MLflow client: pip install 'streamscore[mlflow]' "
                            "(mlflow-skinny), and MLFLOW_TRACKING_URI pointing at the server") from exc
    return MlflowClient()


def download(uri: str, dest_dir: Path) -> Path:
    """Copy the artifact at ``uri`` into ``dest_dir``; returns the local file."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        if is_mlflow_uri(uri):
            return _download_mlflow(uri, dest_dir)
        if "://" not in uri or uri.startswith("file://"):
            src = Path(unquote(urlparse(uri).path) if uri.startswith("file://") else uri)
            if not src.is_file():
                raise ArtifactError(f"{uri}: no such file")
            target = dest_dir / src.name
            shutil.copyfile(src, target)
            return target
        return _download_pyarrow(uri, dest_dir)
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - filesystems raise OSError, ArrowException, botocore errors
        raise ArtifactError(f"{uri}: cannot fetch the artifact: {' '.join(str(exc).split())[:300]}") from exc


def filesystem(uri: str):
    """(pyarrow FileSystem, path) for ``s3://``, ``hdfs://``, ``gs://``, ``file://`` or a local path.

    S3 options ride on the URI query as pyarrow reads them, e.g.
    ``s3://bucket/key?endpoint_override=127.0.0.1:9000&scheme=http`` (credentials from the
    usual AWS environment variables)."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{uri}: no filesystem for it: {' '.join(str(exc).split())[:300]}") from exc


def _download_pyarrow(uri: str, dest_dir: Path) -> Path:
    fs, path = filesystem(uri)
    target = dest_dir / Path(path).name
    with fs.open_input_stream(path) as src, open(target, "wb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)
    return target


def _download_mlflow(uri: str, dest_dir: Path) -> Path:
    try:
        from mlflow.artifacts import download_artifacts
    except ImportError as exc:
        raise ArtifactError("models:/ URIs need the MLflow client: pip install 'streamscore[mlflow]'") from exc
    local = Path(download_artifacts(artifact_uri=uri, dst_path=str(dest_dir)))
    return model_file_in(local, uri)


def model_file_in(local: Path, uri: str) -> Path:
    """The one model file of a downloaded artifact (a file, or a folder such as an MLflow model)."""
    if local.is_file():
        return local
    found = sorted(p for p in local.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    if len(found) != 1:
        listing = ", ".join(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())[:300]
        raise ArtifactError(f"{uri}: expected exactly one model file ({', '.join(MODEL_SUFFIXES)}) in the "
                            f"artifact, found {len(found)} (files: {listing or 'none'})")
    return found[0]


class ModelCache:
    """Per-host cache: one folder per sha256 holding the artifact under its file name."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir() / "registry"

    def path(self, sha256: str, filename: str) -> Path:
        return self.root / sha256 / filename

    def fetch(self, uri: str, sha256: str, size: int, filename: str) -> Path:
        """A verified local copy: the cached one when its sha256 and size still match, else a fresh
        download from ``uri`` (verified before it replaces anything)."""
        target = self.path(sha256, filename)
        if target.is_file():
            got = sha256_of(target)
            if got == (sha256, size):
                return target
            target.unlink(missing_ok=True)      # corrupt cache entry: fetch again from the source
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=self.root) as tmp:
            local = download(uri, Path(tmp))
            got_sha, got_size = sha256_of(local)
            if (got_sha, got_size) != (sha256, size):
                raise ArtifactError(f"{uri}: sha256/size mismatch: registered {sha256[:16]}… ({size:,} bytes), "
                                    f"fetched {got_sha[:16]}… ({got_size:,} bytes); refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, target)           # atomic within the cache's filesystem
        return target
