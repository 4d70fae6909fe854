"""HDFS through WebHDFS (pure HTTP to the NameNode, data redirected to the DataNodes), as a
``pyarrow.fs`` filesystem for :class:`connectors.files.FileTarget`.

``webhdfs://[user@]namenode:http-port/path`` (``swebhdfs://`` for HTTPS) is fsspec's WebHDFS client
wrapped in ``pyarrow.fs.PyFileSystem``. pyarrow's native ``hdfs://`` needs ``libhdfs.so`` and a
Hadoop ``CLASSPATH`` on every worker; neither the pyarrow wheel nor Debian ships libhdfs, so
WebHDFS is the HDFS client here (``hdfs://`` still works where a cluster provides libhdfs).

One correction to fsspec's client, which the exactly-once commit depends on: WebHDFS ``RENAME``
answers ``{"boolean": false}`` (HTTP 200) when it does not rename (the destination exists, its
parent is missing), and fsspec ignores the answer; here a refused rename raises, so a commit is
never taken for done when the file did not move.
"""
from __future__ import annotations

from urllib.parse import parse_qsl

import pyarrow.fs as pafs
from fsspec.implementations.webhdfs import WebHDFS
from fsspec.utils import infer_storage_options

SCHEMES = ("webhdfs", "swebhdfs")
# query options a target URI may carry (webhdfs://nn:9870/out?user=etl)
_OPTIONS = {"user", "proxy_to"}


class CheckedWebHDFS(WebHDFS):
    """fsspec's WebHDFS whose rename raises when HDFS refuses it."""

    def mv(self, path1: str, path2: str, **kwargs) -> None:
        destination = self._strip_protocol(path2)
        reply = self._call("RENAME", method="put", path=path1, destination=destination)
        if reply.json().get("boolean") is True:
            return
        if self.exists(destination):
            raise FileExistsError(f"HDFS refused to rename {path1} to {destination}: the destination exists")
        raise OSError(f"HDFS refused to rename {path1} to {destination} (source missing or no parent directory)")


def webhdfs_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The ``pyarrow.fs`` filesystem for a ``webhdfs://`` or ``swebhdfs://`` URI and the path in it."""
    parts = infer_storage_options(uri)
    if parts["protocol"] not in SCHEMES:
        raise ValueError(f"{uri!r} is not a WebHDFS URI ({', '.join(s + '://' for s in SCHEMES)})")
    if not parts.get("host") or not parts.get("port"):
        raise ValueError(f"{uri!r} must name the NameNode's HTTP address (webhdfs://host:port/path)")
    options = dict(parse_qsl(parts.get("url_query") or "", strict_parsing=True))
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"{uri!r}: unknown WebHDFS option(s) {sorted(unknown)} (known: {sorted(_OPTIONS)})")
    if parts.get("username"):
        options.setdefault("user", parts["username"])
    client = CheckedWebHDFS(parts["host"], port=int(parts["port"]), use_https=parts["protocol"] == "swebhdfs",
                            **options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(client)), parts["path"].rstrip("/") or "/"
