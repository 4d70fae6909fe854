"""The embedded HDFS (Hadoop's MiniDFSCluster in a JVM, connectors/embedded/hdfs.py) and the
WebHDFS filesystem the file sink reaches it through (connectors/files/webhdfs.py)."""
from __future__ import annotations

import os
import urllib.parse

import pyarrow.fs as pafs
import pytest

from connectors.embedded.hdfs import EmbeddedHDFS
from connectors.embedded.ports import listening_ports
from connectors.files import FileTarget
from connectors.files.webhdfs import webhdfs_filesystem

pytestmark = [pytest.mark.slow, pytest.mark.hdfs]


def test_cluster_serves_on_loopback_and_logs_in_its_workdir(hdfs):
    assert hdfs.is_running()
    ports = listening_ports(hdfs.pid)
    assert {hdfs.rpc_port, hdfs.http_port} <= ports, f"the JVM listens on {sorted(ports)}"
    conf = hdfs.configuration()
    assert conf["dfs.permissions.enabled"] == "false"
    assert conf["hdfs.minidfs.basedir"].startswith(str(hdfs.workdir))
    assert "NameNode" in hdfs.log_path.read_text(errors="replace"), f"no NameNode lines in {hdfs.log_path}"
    # WebHDFS sends data to the DataNode: the redirect must name a loopback address this host reaches
    fs, root = webhdfs_filesystem(f"{hdfs.webhdfs_url}/loopback-check")
    client = fs.handler.fs
    reply = client._call("CREATE", "put", f"{root}/f", redirect=False, overwrite="true")
    location = urllib.parse.urlparse(reply.headers["Location"])
    assert location.hostname == "127.0.0.1" and location.port in listening_ports(hdfs.pid), reply.headers["Location"]


def test_rename_onto_an_existing_file_is_refused_on_hdfs_and_replaces_locally(place):
    """The commit's rename differs: HDFS refuses to rename onto an existing file (WebHDFS answers
    ``{"boolean": false}``, which fsspec alone would let pass: connectors.files.webhdfs raises),
    the local filesystem replaces the file (rename(2)). The writer never renames onto an existing
    name (the fence skips what is committed), so both are exactly-once; on HDFS a second job
    writing the same target fails loudly instead of replacing files."""
    fs, root = FileTarget(place).filesystem()
    fs.create_dir(root, recursive=True)
    for name, data in (("a", b"new"), ("b", b"old")):
        with fs.open_output_stream(f"{root}/{name}") as out:
            out.write(data)
    if place.startswith("file:"):
        fs.move(f"{root}/a", f"{root}/b")
        expected_b = b"new"
    else:
        with pytest.raises(FileExistsError, match="destination exists"):
            fs.move(f"{root}/a", f"{root}/b")
        expected_b = b"old"
    with fs.open_input_stream(f"{root}/b") as f:
        assert f.read() == expected_b
    # into a folder that does not exist: both refuse (HDFS rename does not create parents)
    with pytest.raises(OSError):
        fs.move(f"{root}/b", f"{root}/missing/b")


def test_webhdfs_uri_options_are_checked():
    with pytest.raises(ValueError, match="host:port"):
        webhdfs_filesystem("webhdfs:///out")
    with pytest.raises(ValueError, match="unknown WebHDFS option"):
        webhdfs_filesystem("webhdfs://127.0.0.1:9870/out?endpoint_override=x")
    fs, root = webhdfs_filesystem("webhdfs://etl@127.0.0.1:9870/out/")
    assert root == "/out" and fs.handler.fs.pars["user.name"] == "etl"


def test_latest_checkpoint_on_webhdfs(hdfs):
    """``--restore latest`` with ``flink.checkpoint_dir: webhdfs://...`` finds the newest complete
    checkpoint on HDFS (a ``chk-N`` folder holding ``_metadata``) and names it so Flink can read it."""
    from jobs.checkpoints import latest_checkpoint
    base = f"{hdfs.webhdfs_url}/checkpoint-lookup"
    fs, root = webhdfs_filesystem(base)
    assert latest_checkpoint(base) is None
    for job, chk, complete in [("a", 1, True), ("a", 2, False), ("b", 7, True)]:
        fs.create_dir(f"{root}/{job}/chk-{chk}", recursive=True)
        if complete:
            with fs.open_output_stream(f"{root}/{job}/chk-{chk}/_metadata") as out:
                out.write(b"x")
    assert latest_checkpoint(base) == f"{base}/b/chk-7"


def test_stop_ends_the_jvm_and_close_removes_the_workdir():
    cluster = EmbeddedHDFS(heap="256m")
    with cluster:
        pid, workdir = cluster.pid, cluster.workdir
        fs, root = webhdfs_filesystem(f"{cluster.webhdfs_url}/x")
        fs.create_dir(root)
        assert fs.get_file_info(root).type == pafs.FileType.Directory
    assert not cluster.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not workdir.exists()
