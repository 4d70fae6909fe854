"""Exactly-once to Kafka (``kafka.delivery: exactly_once``): Flink's transactional KafkaSink fed
by the Python operators, on Apache Kafka (``kafka_stack``: the embedded Tansu's transactions do not
isolate). The Python worker is killed mid-stream; a ``read_committed`` reader must then see every
input exactly once, as a prediction or as an intact dead letter."""
from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "chaos"))
import scenarios  # noqa: E402
from connectors.embedded import maven  # noqa: E402
from jobs.config import load_config  # noqa: E402
from jobs.score_stream import kafka_connector_jars  # noqa: E402

EVENTS = 10_000


def test_delivery_is_at_least_once_unless_asked():
    assert load_config(None).kafka.delivery == "at_least_once"
    assert load_config(None, ["kafka.delivery=exactly_once"]).kafka.delivery == "exactly_once"
    with pytest.raises(Exception, match="delivery"):
        load_config(None, ["kafka.delivery=exactly-twice"])


@pytest.mark.slow   # the first run fetches the connector and builds the serializer with mvn (~1-2 min)
@pytest.mark.skipif(shutil.which("mvn") is None, reason="building the serializer jar needs Maven (`mvn`)")
def test_the_sink_jars_are_the_connector_and_the_serializer_built_from_source():
    found = kafka_connector_jars()
    assert [p.name for p in found] == ["flink-sql-connector-kafka-5.0.0-2.2.jar", "streamscore-kafka-records-0.jar"]
    assert all(p.is_relative_to(maven.cache_root()) for p in found), "built or fetched into the cache, not the repo"
    with zipfile.ZipFile(found[1]) as jar:
        assert "streamscore/flink/KafkaRowSerializer.class" in jar.namelist()
    assert kafka_connector_jars() == found, "the second call reuses the cached build"


@pytest.mark.slow
def test_kill_python_worker_exactly_once_no_loss_no_duplicates(kafka_stack):
    outcome = scenarios.kill_python_worker(kafka_stack, events=EVENTS, rate=1000, delivery="exactly_once")
    print(f"\n{outcome.to_dict()}")
    assert outcome.failovers >= 1, "Flink did not notice the killed worker: nothing was replayed"
    assert outcome.inputs == EVENTS
    assert outcome.lost == 0, outcome
    assert outcome.duplicates == 0, f"{outcome.duplicates} inputs written twice under exactly_once: {outcome}"
    assert outcome.predicted + outcome.dead_lettered == EVENTS
    assert outcome.dead_lettered == EVENTS // 100, "only the bad input may be dead-lettered"
    assert outcome.wrong_reasons == 0, outcome.notes
    assert outcome.damaged_dead_letters == 0, outcome.notes
