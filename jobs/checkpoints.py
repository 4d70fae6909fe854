"""Finding the checkpoint to restore from."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def local_path(uri: str) -> Path:
    """``file:///x`` or ``/x`` → Path (only local checkpoint directories can be searched here)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"cannot search {uri!r} for checkpoints: pass an explicit checkpoint path")
    return Path(parsed.path)


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest complete checkpoint (a ``chk-N`` folder holding ``_metadata``) of any job that
    wrote under ``checkpoint_dir``, or None."""
    root = local_path(checkpoint_dir)
    if not root.exists():
        return None
    complete = [m.parent for m in root.glob("*/chk-*/_metadata")]
    if not complete:
        return None
    return str(max(complete, key=lambda p: p.stat().st_mtime))
