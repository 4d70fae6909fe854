"""Feature snapshots: Parquet datasets in durable storage, their schema fingerprint and checksum,
and the schema check of a model's inputs against a snapshot and the event fields."""
from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass

import pyarrow as pa

from registry.artifacts import filesystem
from registry.errors import ArtifactError


def schema_columns(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def schema_fingerprint(columns: list[dict[str, str]]) -> str:
    """sha256 of the column names and types, in order."""
    text = "\n".join(f"{c['name']}:{c['type']}" for c in columns)
    return hashlib.sha256(text.encode()).hexdigest()


def _files(uri: str) -> tuple[object, list[str]]:
    """(filesystem, sorted Parquet file paths) of a file or folder dataset."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ArtifactError(f"{uri}: no such dataset")
    if info.type == pafs.FileType.File:
        return fs, [path]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith((".parquet", ".pq")))
    if not files:
        raise ArtifactError(f"{uri}: no .parquet files in the folder")
    return fs, files


def read_dataset(uri: str) -> tuple[pa.Table, str]:
    """The dataset's table and its checksum: sha256 over each file's relative path and sha256."""
    import pyarrow.parquet as pq

    try:
        fs, files = _files(uri)
        outer, tables = hashlib.sha256(), []
        for path in files:
            with fs.open_input_stream(path) as f:
                data = f.read()
            outer.update(f"{path.rsplit('/', 1)[-1]}:{hashlib.sha256(data).hexdigest()}\n".encode())
            tables.append(pq.read_table(io.BytesIO(data)))
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, ArrowInvalid (not Parquet), filesystem errors
        raise ArtifactError(f"{uri}: cannot read the Parquet dataset: {' '.join(str(exc).split())[:300]}") from exc
    try:
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as exc:
        raise ArtifactError(f"{uri}: the dataset's files disagree on the schema: {exc}") from exc
    return table, outer.hexdigest()


def write_dataset(table: pa.Table, base_uri: str, name: str) -> str:
    """Write ``table`` as one Parquet file under ``base_uri/name/`` (a fresh file name, never an
    overwrite); returns its URI."""
    import pyarrow.parquet as pq

    file_name = f"{uuid.uuid4().hex}.parquet"
    base = base_uri.rstrip("/")
    fs, path = filesystem(base)
    target_dir = f"{path.rstrip('/')}/{name}"
    try:
        fs.create_dir(target_dir, recursive=True)
        with fs.open_output_stream(f"{target_dir}/{file_name}") as out:
            pq.write_table(table, out)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"cannot write the snapshot under {base_uri}: {' '.join(str(exc).split())[:300]}") from exc
    if "://" in base:
        scheme_and_host, _, query = base.partition("?")
        return f"{scheme_and_host}/{name}/{file_name}" + (f"?{query}" if query else "")
    return f"{target_dir}/{file_name}"


# ------------------------------------------------------------------------------------------------
# Schema compatibility: can the events plus the pinned snapshot feed the model's inputs?

_ACCEPTS = {
    "float": ("float", "double", "halffloat", "int", "uint"),
    "double": ("float", "double", "halffloat", "int", "uint"),
    "integer": ("int", "uint"),
    "string": ("string", "large_string", "dictionary"),
    "boolean": ("bool",),
}
_EVENT_TYPES = {"float": "float", "double": "double", "int": "int64", "integer": "int64", "long": "int64",
                "string": "string", "str": "string", "bool": "bool", "boolean": "bool", "any": "any"}


def arrow_kind(type_text: str) -> str:
    t = type_text.lower()
    for prefix in ("halffloat", "float", "double", "uint", "int", "large_string", "string", "bool", "dictionary"):
        if t.startswith(prefix):
            return prefix
    return t


def parse_event_fields(spec: str | list[str] | dict[str, str] | None) -> dict[str, str] | None:
    """``"amount:double,country:string,hour"`` (or a list of such, or a dict) -> {field: arrow type};
    a field without a type is ``any``."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return {k: str(v) for k, v in spec.items()}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, str] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, typ = item.partition(":")
        typ = typ.strip().lower() or "any"
        if typ not in _EVENT_TYPES:
            raise ValueError(f"event field {item!r}: unknown type {typ!r} (one of {', '.join(_EVENT_TYPES)})")
        out[name.strip()] = _EVENT_TYPES[typ]
    return out


@dataclass(frozen=True)
class Compatibility:
    missing: list[str]              # inputs neither the snapshot nor the events provide
    mistyped: list[str]             # "input: model wants float, snapshot has string"
    unchecked: list[str]            # inputs assumed to come from events whose fields were not declared

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mistyped

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing inputs {', '.join(self.missing)}")
        if self.mistyped:
            parts.append(f"mistyped inputs {'; '.join(self.mistyped)}")
        return "; ".join(parts) or "compatible"


def check_inputs(inputs: list[dict], snapshot_columns: list[dict[str, str]] | None, key_column: str | None,
                 event_fields: dict[str, str] | None) -> Compatibility:
    """Each model input must come from the snapshot (a non-key column) or from the events, with a
    type the model accepts. ``event_fields=None``: the events are not declared, so inputs the
    snapshot lacks are assumed to come from them (listed as unchecked)."""
    snap = {c["name"]: c["type"] for c in (snapshot_columns or []) if c["name"] != key_column}
    missing, mistyped, unchecked = [], [], []
    for field in inputs:
        name, want = field["name"], field.get("dtype", "double")
        if name in snap:
            source, have = "snapshot", snap[name]
        elif event_fields is not None and name in event_fields:
            source, have = "events", event_fields[name]
        elif event_fields is None:
            unchecked.append(name)
            continue
        else:
            if field.get("required", True):
                missing.append(name)
            continue
        if have != "any" and arrow_kind(have) not in _ACCEPTS.get(want, (arrow_kind(have),)):
            mistyped.append(f"{name}: model wants {want}, {source} has {have}")
    return Compatibility(missing, mistyped, unchecked)
