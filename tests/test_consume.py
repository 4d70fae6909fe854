"""`streamscore consume`: the analyst's view of the at-least-once prediction topic, with
de-duplication by prediction id, and of the dead-letter topic."""
from __future__ import annotations

import json
import uuid

import orjson

from connectors.dead_letter import DeadLetter
from connectors.kafka.clients import ensure_topics, producer_config
from connectors.kafka.dedupe import Deduplicator
from connectors.kafka.writer import KafkaBatchWriter
from jobs.cli import main as cli


def test_deduplicator_forgets_beyond_its_window():
    d = Deduplicator(window=3)
    assert [d.first_time(k) for k in "abca"] == [True, True, True, False]
    d.first_time("d")             # "a" was refreshed: the window is c a d, "b" fell out
    d.first_time("e")
    assert d.first_time("b") is True and d.duplicates == 1


def _topic(stack, partitions=2) -> str:
    name = f"consume-{uuid.uuid4().hex[:6]}"
    ensure_topics(stack.broker.bootstrap_servers, {name: partitions})
    return name


def test_consume_dedupe_prints_each_prediction_once(stack, capsys):
    topic = _topic(stack)
    writer = KafkaBatchWriter(producer_config(stack.broker.bootstrap_servers), topic, None)
    predictions = [orjson.dumps({"prediction_id": f"events/0/{i}", "score": i / 10}) for i in range(50)]
    writer.write(predictions + predictions[10:30], [b"k"] * 70)     # a replay re-wrote 20 of them
    writer.close()
    args = [topic, "-b", stack.broker.bootstrap_servers, "--idle-timeout", "2"]

    assert cli(["consume", *args]) == 0
    everything = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(everything) == 70

    assert cli(["consume", *args, "--dedupe"]) == 0
    out, err = capsys.readouterr()
    unique = [json.loads(line) for line in out.splitlines()]
    assert sorted(p["prediction_id"] for p in unique) == sorted(f"events/0/{i}" for i in range(50))
    assert "dropped 20 duplicates" in err

    assert cli(["consume", *args, "--max-messages", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_consume_dead_letters_shows_reason_source_and_original_bytes(stack, capsys):
    topic = _topic(stack, partitions=1)
    writer = KafkaBatchWriter(producer_config(stack.broker.bootstrap_servers), "unused", topic)
    writer.write([], None, [DeadLetter(b'{"id": 1', "invalid_json", "Expecting ','", "events", 0, 7),
                            DeadLetter(b"\xff\xfe", "invalid_utf8", "bad byte", "events", 1, 9),
                            DeadLetter(None, "empty_message", "empty record value", "events", 1, 10)])
    writer.close()
    assert cli(["consume", topic, "-b", stack.broker.bootstrap_servers, "--dead-letters", "--idle-timeout", "2"]) == 0
    letters = {d["source"]: d for d in map(json.loads, capsys.readouterr().out.splitlines())}
    assert letters["events/0/7"] == {"source": "events/0/7", "reason": "invalid_json",
                                     "detail": "Expecting ','", "value": '{"id": 1'}
    assert letters["events/1/9"]["value"] == "fffe" and letters["events/1/9"]["value_encoding"] == "hex"
    assert letters["events/1/10"]["reason"] == "empty_message" and letters["events/1/10"]["value"] is None
