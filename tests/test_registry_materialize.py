"""Per-host feature materialization from the registry (issue #13): two Plasma stores (two
sockets standing for two hosts) fed from one published snapshot, once per host however many
workers ask; readers switch atomically to the next pinned snapshot and the old version is freed;
an incompatible snapshot is refused, recorded, and the store keeps serving what it had."""
from __future__ import annotations

import threading
import time
import warnings
from dataclasses import replace

import numpy as np
import pytest

from connectors.embedded.plasma_server import PlasmaServer
from connectors.feature_store import lineage_of, open_store
from model_formats.reloading import ReloadingModel
from registry import FeatureSetRef, PolicyRefused, open_registry
from registry.follow import RegistrySource
from registry.materialize import HostMaterializer
from registry_fixtures import features_table, model_copy, write_parquet

WHO = dict(actor="tester@host", reason="test")
ENV = "integration"
WORKERS_PER_HOST = 3


@pytest.fixture
def hosts(tmp_path):
    """Two Plasma stores, empty: the feature store URIs of host A and host B."""
    with PlasmaServer(tmp_path / "a.sock", 64 << 20) as a, PlasmaServer(tmp_path / "b.sock", 64 << 20) as b:
        yield [a.uri("customers"), b.uri("customers")]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMSCORE_CACHE", str(tmp_path / "cache"))      # the host locks live there
    reg = open_registry(f"sqlite:///{tmp_path / 'registry.db'}", cache_dir=tmp_path / "cache")
    reg.init()
    reg.register_snapshot("customers", str(write_parquet(tmp_path, features_table(100))), key_column="entity_id", **WHO)
    reg.register_model("fraud", str(model_copy(tmp_path)), feature_set="customers", **WHO)
    reg.promote("fraud", 1, ENV, **WHO)
    yield reg
    reg.close()


def materialize_everywhere(reg, stores: list[str]) -> dict[str, int]:
    """Every worker of every host asks at once; returns loads per host."""
    deployment = reg.deployment("fraud", ENV)
    workers = {uri: [HostMaterializer(uri, reg.uri) for _ in range(WORKERS_PER_HOST)] for uri in stores}
    errors = []

    def run(m):
        try:
            m.ensure(deployment)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for ms in workers.values() for m in ms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return {uri: sum(m.loads for m in ms) for uri, ms in workers.items()}


def answer(uri: str, keys=(0, 5, 99, 150)) -> tuple[str, list]:
    with open_store(uri, refresh_interval_s=0) as store:
        batch, found = store.lookup(np.array(keys))
        return lineage_of(batch), found.tolist()


def test_empty_hosts_are_loaded_once_each_from_one_snapshot(hosts, registry):
    assert materialize_everywhere(registry, hosts) == {hosts[0]: 1, hosts[1]: 1}
    for uri in hosts:
        assert answer(uri) == ("customers@1", [True, True, True, False])
    # asked again (a worker restarts): nothing to do
    assert materialize_everywhere(registry, hosts) == {hosts[0]: 0, hosts[1]: 0}


def test_a_new_pinned_snapshot_switches_readers_atomically_and_frees_the_old(hosts, registry, tmp_path):
    materialize_everywhere(registry, hosts)
    readers = [open_store(uri, refresh_interval_s=0) for uri in hosts]     # running jobs' readers
    assert [lineage_of(r.lookup(np.array([150]))[0]) for r in readers] == ["customers@1"] * 2
    registry.register_snapshot("customers", str(write_parquet(tmp_path, features_table(200))),
                               key_column="entity_id", **WHO)
    registry.promote("fraud", 1, ENV, features="customers@2", **WHO)
    assert materialize_everywhere(registry, hosts) == {hosts[0]: 1, hosts[1]: 1}
    for r in readers:
        batch, found = r.lookup(np.array([0, 150]))
        assert lineage_of(batch) == "customers@2" and found.tolist() == [True, True]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from connectors.feature_store.plasma_objects import connect, versions
    for uri in hosts:       # once the readers moved on, the store holds the new version only
        client = connect(uri.split("://", 1)[1].split("?")[0])
        try:
            assert len(versions(client, "customers", sealed_only=False)) == 1
        finally:
            client.disconnect()
    for r in readers:
        r.close()


def test_an_incompatible_snapshot_is_refused_recorded_and_the_store_keeps_serving(hosts, registry, tmp_path):
    host = hosts[0]
    registry.register_model("fraud", str(model_copy(tmp_path, "forest.onnx")), **WHO)   # v2: no feature set
    source = RegistrySource(registry.uri, "fraud", ENV, interval_s=0.2, cache_dir=tmp_path / "c",
                            actor="job:host-a", on_features=HostMaterializer(host, registry.uri).ensure)
    model = ReloadingModel(source, check_interval_s=0)        # starting on an empty host loads its features
    try:
        assert answer(host)[0] == "customers@1"
        other_key = features_table(50).rename_columns(["customer_no", *features_table(1).column_names[1:]])
        registry.register_snapshot("customers", str(write_parquet(tmp_path, other_key)), key_column="customer_no", **WHO)
        registry.promote("fraud", 2, ENV, features="customers@2", **WHO)
        deadline, entries = time.monotonic() + 30, []
        while not entries:
            entries = [e for e in registry.history("fraud", env=ENV) if e.action == "refused-by-job"]
            assert time.monotonic() < deadline, "waited 30 s for the refusal of the incompatible snapshot"
            time.sleep(0.05)
        [entry] = entries
        assert entry.to_version == 2 and "keyed by 'customer_no'" in entry.reason and entry.actor == "job:host-a"
        assert answer(host)[0] == "customers@1"               # the store kept serving
        assert model.check() is False and model.model.version == "1"
    finally:
        model.close()
    # the fingerprint check: a champion trained on another feature set
    deployment = registry.deployment("fraud", ENV)
    with pytest.raises(PolicyRefused, match="schema fingerprint"):
        HostMaterializer(host, registry.uri).ensure(
            replace(deployment, champion=replace(deployment.champion, feature_set=FeatureSetRef("customers", "0" * 64))))
