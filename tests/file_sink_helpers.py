"""Reading a file sink's output wherever it is (a ``file://`` folder or ``webhdfs://`` on the
embedded HDFS), through the same ``pyarrow.fs`` filesystem the sink writes with."""
from __future__ import annotations

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connectors.files import FileTarget
from connectors.files.target import STAGING_DIR


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return FileTarget(uri).filesystem()


def committed_column(uri: str, column: str) -> list:
    """One column of every committed Parquet file under ``uri`` (what a pyarrow.dataset reader
    sees: paths with a '_' or '.' component are skipped)."""
    fs, root = filesystem(uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    dataset = ds.dataset(root, filesystem=fs, format="parquet", partitioning="hive")
    return dataset.to_table(columns=[column]).column(column).to_pylist() if dataset.files else []


def visible_paths(uri: str) -> list[str]:
    """Files a reader lists under ``uri``: none of their path components below it start with '_' or '.'."""
    fs, root = filesystem(uri)
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return [i.path for i in found if i.type == pafs.FileType.File
            and not any(c.startswith(("_", ".")) for c in i.path[len(root):].split("/") if c)]


def staged_paths(uri: str, writer: str | None = None) -> list[str]:
    """Staging files of one writer (or of every writer) of the target at ``uri``."""
    fs, root = filesystem(uri)
    base = f"{root}/{STAGING_DIR}" + (f"/{writer}" if writer else "")
    found = fs.get_file_info(pafs.FileSelector(base, recursive=writer is None, allow_not_found=True))
    return [i.path for i in found if i.type == pafs.FileType.File]


def read_column(uri: str, path: str, column: str) -> list:
    """One column of the Parquet file at ``path`` on the filesystem of ``uri``."""
    fs, _ = filesystem(uri)
    return pq.read_table(path, columns=[column], filesystem=fs).column(0).to_pylist()
