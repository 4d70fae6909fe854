"""Fuzz the running job: 10,000 generated hostile events interleaved with valid ones. Every
hostile event lands in the dead-letter topic with its reason, every valid one is scored, and
the job never fails over because of its input."""
from __future__ import annotations


import pytest

from fuzz_events import MAX_BYTES, FuzzEvents
from jobs.producer import produce

pytestmark = pytest.mark.slow

BAD, GOOD = 10_000, 10_000


def test_hostile_input_never_restarts_the_job_and_is_all_accounted_for(stack):
    cfg = stack.job_config("fuzz", partitions=2, events__max_bytes=MAX_BYTES)
    records = list(FuzzEvents(stack.entities, seed=21).mixed(bad=BAD, good=GOOD))
    job, reader = stack.start_job(cfg)
    try:
        coords = produce(cfg.kafka.bootstrap_servers, cfg.kafka.input_topic, [v for v, _ in records],
                         settings=cfg.kafka.producer)
        expected = dict(zip(coords, (reason for _, reason in records)))
        tally = reader.wait_for(set(coords), timeout_s=600, stall_s=180, check=job.check_alive)
        rest = job.rest()
        running = rest.running_jobs()
        assert len(running) == 1, running
        restarts = rest.restarts(running[0]["jid"])
        exceptions = rest.exceptions(running[0]["jid"])
    finally:
        reader.stop()
        job.stop()
    assert not tally.missing(set(coords)), f"{len(tally.missing(set(coords)))} inputs unaccounted for"
    scored_bad = [c for c, r in expected.items() if r is not None and c in tally.predictions]
    assert not scored_bad, f"{len(scored_bad)} hostile events were scored"
    unscored_good = [(c, tally.dead_letters.get(c)) for c, r in expected.items() if r is None and c not in tally.predictions]
    assert not unscored_good, f"{len(unscored_good)} valid events were not scored, e.g. {unscored_good[:5]}"
    wrong = [(c, r, tally.dead_letters[c]) for c, r in expected.items() if r is not None and tally.dead_letters[c] != r]
    assert not wrong, f"{len(wrong)} dead letters with the wrong reason, e.g. {wrong[:5]}"
    assert restarts == 0 and not exceptions, f"the job failed over {restarts} times: {exceptions[:3]}"
    assert tally.duplicate_ids & set(coords) == set(), "outputs were written twice: the job replayed input"
    print(f"\nfuzz: {BAD} hostile + {GOOD} valid events; reasons {dict(sorted(tally.reasons().items()))}")
