"""Kill -9 the job mid-stream, restart it from its last checkpoint: every input is accounted
for afterwards (at-least-once: duplicates allowed and reported, nothing missing)."""
from __future__ import annotations

import threading
import time

import pytest

from jobs import demo_data
from jobs.checkpoints import latest_checkpoint
from jobs.producer import produce
from jobs.tally import OutputReader

pytestmark = pytest.mark.slow

N_EVENTS = 20_000


def test_restart_from_checkpoint_after_kill(stack):
    cfg = stack.job_config("restart", partitions=2, flink__checkpoint_interval_ms=1000)
    reader = OutputReader(cfg.kafka.bootstrap_servers, cfg.kafka.output_topic, cfg.kafka.dead_letter_topic).start()
    job = stack.job(cfg).start()
    restarted = None
    try:
        coords: list[str] = []
        producer = threading.Thread(target=lambda: coords.extend(produce(
            cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
            demo_data.events(N_EVENTS, stack.entities, seed=31), rate=2500, encode=demo_data.encode)))
        producer.start()
        # wait until the job is mid-stream: predictions flowing and a checkpoint completed
        deadline = time.monotonic() + 300
        while True:
            job.check_alive()
            done = len(reader.snapshot().predictions)
            latest = latest_checkpoint(cfg.flink.checkpoint_dir)
            if done >= 3000 and latest and int(latest.rsplit("chk-", 1)[1]) >= 3:
                break
            assert time.monotonic() < deadline, f"job never got going ({done} predictions)"
            time.sleep(0.2)
        job.kill()
        killed_at = len(reader.snapshot().predictions)
        checkpoint = latest_checkpoint(cfg.flink.checkpoint_dir)
        assert checkpoint, "no completed checkpoint to restore from"
        restarted = stack.job(cfg, "--restore", "latest").start()
        producer.join(timeout=120)
        assert len(coords) == N_EVENTS
        tally = reader.wait_for(set(coords), timeout_s=600, stall_s=180, check=restarted.check_alive)
        missing = tally.missing(set(coords))
        assert killed_at < N_EVENTS, "the kill happened after everything was scored: not mid-stream"
        assert not missing, f"{len(missing)} inputs lost across the restart, e.g. {sorted(missing)[:5]}"
        assert len(tally.predictions) == N_EVENTS
        # it resumed from the checkpoint's offsets, not from the start of the topic
        assert tally.duplicate_predictions < killed_at
        print(f"\nkilled after {killed_at} predictions; restored from {checkpoint}; "
              f"duplicates after restart: {tally.duplicate_predictions}")
    finally:
        reader.stop()
        job.kill()
        if restarted:
            restarted.stop()
