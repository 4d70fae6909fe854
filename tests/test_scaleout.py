"""Scale-out on a standalone Flink cluster with two TaskManagers, each standing for a host with its
own Plasma feature store: the job's ``features.store`` is ``plasma://${STREAMSCORE_PLASMA_SOCKET}?…``
and each TaskManager is started with its own socket in that variable. The two stores hold the same
features under different lineage (``host-a@1``, ``host-b@1``), so every prediction says which
host's store enriched it. Partitions must spread evenly over the subtasks (the source's partition
keys, operators/flink/partition_keys.py), and a rescale from savepoints 1 → 2 → 1 loses nothing."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from connectors.embedded.plasma_server import PlasmaServer
from connectors.feature_store import load_table
from flink_cluster import StandaloneCluster
from jobs import demo_data
from jobs.flink_rest import FlinkRest
from jobs.producer import produce
from jobs.tally import OutputReader, Tally
from operators.flink.partition_keys import partition_keys, subtask_of

pytestmark = pytest.mark.slow

HOSTS = ("host-a", "host-b")
STORE_URI = "plasma://${STREAMSCORE_PLASMA_SOCKET}?name=features"
MAX_PARALLELISM = 128          # flink.max_parallelism's default


@pytest.fixture(scope="module")
def host_stores(tmp_path_factory, stack):
    """One Plasma store per host, both holding the demo features, lineage ``<host>@1``."""
    folder = tmp_path_factory.mktemp("hosts")
    servers = {}
    try:
        for host in HOSTS:
            server = servers[host] = PlasmaServer(folder / f"{host}.sock", 128 << 20,
                                                  log_path=folder / f"{host}-plasma.log").start()
            load_table(server.uri("features"), stack.features, key="entity_id", lineage=f"{host}@1")
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def two_taskmanagers(tmp_path_factory, host_stores):
    """JobManager + TaskManagers ``host-a`` and ``host-b`` (one slot each), each with its own
    STREAMSCORE_PLASMA_SOCKET."""
    cluster = StandaloneCluster(tmp_path_factory.mktemp("scaleout") / "flink", slots=1, taskmanagers={
        host: {"STREAMSCORE_PLASMA_SOCKET": server.socket_path} for host, server in host_stores.items()})
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def job_config(stack, name: str, partitions: int, **overrides):
    cfg = stack.job_config(name, partitions=partitions, flink__checkpoint_interval_ms=1000, **overrides)
    cfg.features.store = STORE_URI
    return cfg


def events_with_bad(n: int, stack, seed: int, prefix: str) -> tuple[list, Counter]:
    records, reasons = demo_data.with_bad_events(demo_data.events(n, stack.entities, seed=seed, prefix=prefix),
                                                 stack.entities, every=97, start=13, salt=seed * 1000)
    return records, Counter(reasons.values())


def partition_of(coord: str) -> int:
    return int(coord.rsplit("/", 2)[1])


def store_per_partition(tally: Tally, inputs: set[str]) -> dict[int, Counter]:
    """Input partition → how many of its predictions each host's store enriched."""
    seen: dict[int, Counter] = defaultdict(Counter)
    for coord in inputs:
        prediction = tally.predictions.get(coord)
        if prediction is not None:
            seen[partition_of(coord)][prediction["features"].split("@")[0]] += 1
    return dict(sorted(seen.items()))


def stop_keeping_taskmanagers(cluster: StandaloneCluster, job_id: str, tmp_path: Path) -> None:
    """End the job with stop-with-savepoint, not cancel: cancelling a PyFlink 2.3 job can take a
    TaskManager down (its Python environment is released twice: "IllegalStateException: Reference
    count must not be negative" in DefaultJobBundleFactory, a fatal error that exits the JVM).
    Both TaskManagers must still be there afterwards."""
    FlinkRest(f"http://127.0.0.1:{cluster.rest_port}", timeout_s=10).stop_with_savepoint(
        job_id, (tmp_path / "final-savepoint").as_uri())
    cluster.wait_slots_free()
    assert cluster.rest("/overview")["taskmanagers"] == len(HOSTS), cluster.log_tail()


def report(name: str, data: dict) -> None:
    """Print what the test measured (run with -s to see it) as one JSON line."""
    print(f"\nSCALEOUT {name}: {json.dumps(data, sort_keys=True)}")


@pytest.mark.parametrize("partitions", [4, 8])
def test_two_taskmanagers_spread_partitions_and_read_their_own_stores(two_taskmanagers, stack, tmp_path, partitions):
    cluster = two_taskmanagers
    cluster.wait_slots_free()
    cfg = job_config(stack, f"scaleout-{partitions}p-{uuid.uuid4().hex[:6]}", partitions, flink__parallelism=2)
    reader = OutputReader(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, cfg.kafka.dead_letter_topic).start()
    job_id = cluster.submit(cfg.to_yaml(tmp_path / "job.yaml"))
    try:
        records, reasons = events_with_bad(250 * partitions, stack, seed=60 + partitions, prefix=f"p{partitions}")
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, records, encode=demo_data.encode,
                         partitions=partitions)
        inputs = set(coords)
        tally = reader.wait_for(inputs, timeout_s=300, stall_s=240)
        assert not tally.missing(inputs), f"{len(tally.missing(inputs))} inputs lost:\n{cluster.log_tail()}"
        assert tally.reasons() == reasons

        # where each partition was read: the subtask its key belongs to, on the TaskManager that runs it
        placement = cluster.placement(job_id, "source")
        assert sorted(placement.values()) == sorted(HOSTS), placement
        keys = partition_keys(list(range(partitions)), MAX_PARALLELISM)
        subtask = {p: subtask_of(keys[p], MAX_PARALLELISM, 2) for p in range(partitions)}
        per_subtask = Counter(subtask.values())
        assert per_subtask == {0: partitions // 2, 1: partitions // 2}, subtask

        # ... and every prediction of a partition was enriched by that TaskManager's own store
        stores = store_per_partition(tally, inputs)
        for p in range(partitions):
            assert set(stores[p]) == {placement[subtask[p]]}, (p, stores[p], placement)

        # the subtasks' own counters agree: records read per subtask = inputs of its partitions
        sent = Counter(partition_of(c) for c in coords)
        want = {s: sum(sent[p] for p in range(partitions) if subtask[p] == s) for s in (0, 1)}
        deadline = time.monotonic() + 60
        while (read := {s: int(v) for s, v in cluster.subtask_metric(job_id, "records_in").items()}) != want \
                and time.monotonic() < deadline:
            time.sleep(1)
        assert read == want
        report(f"{partitions} partitions, parallelism 2", {
            "subtask_of_partition": subtask, "taskmanager_of_subtask": placement,
            "predictions_per_partition": {p: sum(c.values()) for p, c in stores.items()},
            "store_per_partition": {p: dict(c) for p, c in stores.items()},
            "records_in_per_subtask": want, "dead_letters": len(tally.dead_letters),
            "duplicates": tally.duplicate_predictions + tally.duplicate_dead_letters})
        stop_keeping_taskmanagers(cluster, job_id, tmp_path)
    finally:
        reader.stop()


class BackgroundProducer:
    """Produces demo events round-robin over the partitions, in chunks, until stopped; remembers
    every acknowledged input coordinate and the dead-letter reasons it must get."""

    def __init__(self, stack, cfg, partitions: int, rate: float = 100.0, chunk: int = 200) -> None:
        self.stack, self.cfg, self.partitions, self.rate, self.chunk = stack, cfg, partitions, rate, chunk
        self.coords: list[str] = []
        self.reasons: Counter = Counter()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="background-producer", daemon=True)

    def _run(self) -> None:
        try:
            n = 0
            while not self._stop.is_set():
                records, reasons = events_with_bad(self.chunk, self.stack, seed=200 + n, prefix=f"rescale{n}")
                self.coords += produce(self.cfg.kafka.bootstrap_servers, self.cfg.kafka.input_topic, records,
                                       rate=self.rate, encode=demo_data.encode, partitions=self.partitions)
                self.reasons += reasons
                n += 1
        except BaseException as exc:      # noqa: BLE001 (re-raised by stop())
            self._error = exc

    def start(self) -> "BackgroundProducer":
        self._thread.start()
        return self

    def stop(self) -> list[str]:
        """Stop after the current chunk; every coordinate acknowledged (raises what the thread raised)."""
        self._stop.set()
        self._thread.join(timeout=120)
        if self._error is not None:
            raise self._error
        return list(self.coords)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def test_rescale_from_savepoints_one_two_one(two_taskmanagers, stack, tmp_path):
    """Parallelism 1 → stop with a savepoint (REST) → resume at 2 → savepoint → resume at 1, while
    events keep coming: every input is predicted or dead-lettered, duplicates counted."""
    cluster = two_taskmanagers
    cluster.wait_slots_free()
    rest = FlinkRest(f"http://127.0.0.1:{cluster.rest_port}", timeout_s=10)
    partitions = 4
    cfg = job_config(stack, f"scaleout-rescale-{uuid.uuid4().hex[:6]}", partitions)
    yamls = {}
    for parallelism in (1, 2):
        cfg.flink.parallelism = parallelism
        yamls[parallelism] = cfg.to_yaml(tmp_path / f"job-p{parallelism}.yaml")
    reader = OutputReader(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, cfg.kafka.dead_letter_topic).start()
    producer = BackgroundProducer(stack, cfg, partitions).start()
    phases, savepoints = [], []
    job_id = None
    try:
        for step, parallelism in enumerate((1, 2, 1)):
            options = ("--fromSavepoint", savepoints[-1]) if savepoints else ()
            cluster.wait_slots_free()
            job_id = cluster.submit(Path(yamls[parallelism]), *options)
            cluster.wait_running(job_id)
            placement = cluster.placement(job_id, "source")
            assert len(placement) == parallelism
            # this phase has scored events produced while it runs, through its own TaskManagers' stores
            start = len(producer.coords)
            stores: set[str] = set()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                fresh = set(producer.coords[start:])
                tally = reader.snapshot()
                stores = {tally.predictions[c]["features"].split("@")[0] for c in fresh if c in tally.predictions}
                if len(fresh) >= 500 and stores == set(placement.values()):
                    break
                time.sleep(0.5)
            assert stores == set(placement.values()), (parallelism, stores, placement)
            phases.append({"parallelism": parallelism, "taskmanagers": placement, "stores_seen": sorted(stores)})
            if step < 2:
                savepoints.append(rest.stop_with_savepoint(job_id, (tmp_path / "savepoints").as_uri()))
                assert cluster.rest(f"/jobs/{job_id}")["state"] == "FINISHED"
        coords = producer.stop()
        inputs = set(coords)
        tally = reader.wait_for(inputs, timeout_s=300, stall_s=240)
        missing = tally.missing(inputs)
        assert not missing, f"{len(missing)} of {len(inputs)} inputs lost across the rescales:\n{cluster.log_tail()}"
        assert tally.reasons() == producer.reasons
        duplicates = tally.duplicate_predictions + tally.duplicate_dead_letters
        per_partition = Counter(partition_of(c) for c in inputs)
        report("rescale 1 -> 2 -> 1", {"inputs": len(inputs), "predicted": len(tally.predictions),
                                       "dead_letters": len(tally.dead_letters), "duplicates": duplicates,
                                       "inputs_per_partition": dict(sorted(per_partition.items())),
                                       "phases": phases, "savepoints": len(savepoints)})
        # a savepoint holds the offsets of everything scored before it: the resumed job, at any
        # parallelism, starts each partition right there (a partition whose offset state were lost
        # would be read again from the start: thousands of duplicates)
        assert duplicates == 0
        stop_keeping_taskmanagers(cluster, job_id, tmp_path)
    finally:
        producer.close()
        reader.stop()
