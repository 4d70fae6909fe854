"""Finding the checkpoint to restore from."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from connectors.files.webhdfs import SCHEMES as WEBHDFS_SCHEMES, webhdfs_filesystem


def local_path(uri: str) -> Path:
    """``file:///x`` or ``/x`` → Path (only local checkpoint directories can be searched here)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"cannot search {uri!r} for checkpoints: pass an explicit checkpoint path")
    return Path(parsed.path)


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest complete checkpoint (a ``chk-N`` folder holding ``_metadata``) of any job that
    wrote under ``checkpoint_dir`` (a local folder or ``webhdfs://``), or None."""
    if urlparse(checkpoint_dir).scheme in WEBHDFS_SCHEMES:
        return _latest_on_webhdfs(checkpoint_dir)
    root = local_path(checkpoint_dir)
    if not root.exists():
        return None
    complete = [m.parent for m in root.glob("*/chk-*/_metadata")]
    if not complete:
        return None
    return str(max(complete, key=lambda p: p.stat().st_mtime))


def checkpoint_number(path: str | None) -> int:
    """N of a ``.../chk-N`` checkpoint path (0 for None: no checkpoint yet)."""
    return int(path.rsplit("chk-", 1)[1]) if path else 0


def _latest_on_webhdfs(uri: str) -> str | None:
    """:func:`latest_checkpoint` on HDFS through WebHDFS (Flink writes ``webhdfs://`` checkpoints
    through Hadoop's WebHdfsFileSystem when the Hadoop client is on its classpath)."""
    fs, root = webhdfs_filesystem(uri)
    prefix = uri.partition("?")[0].rstrip("/")
    prefix = prefix[: len(prefix) - len(root.rstrip("/"))]           # webhdfs://host:port

    def folders(path: str) -> list[pafs.FileInfo]:
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return [i for i in found if i.type == pafs.FileType.Directory and i.path.rstrip("/") != path.rstrip("/")]

    complete = []
    for job in folders(root):
        for chk in folders(job.path):
            if chk.base_name.startswith("chk-"):
                metadata = fs.get_file_info(f"{chk.path}/_metadata")
                if metadata.type == pafs.FileType.File:
                    complete.append((metadata.mtime, chk.path))
    return prefix + max(complete)[1] if complete else None
