"""Kill -9 the job mid-stream, restart it from its last checkpoint: every input is accounted
for afterwards (at-least-once: duplicates allowed and reported, nothing missing)."""
from __future__ import annotations

import threading
import time

import pytest

from jobs import demo_data
from jobs.checkpoints import checkpoint_number, latest_checkpoint
from jobs.producer import produce

pytestmark = pytest.mark.slow

N_EVENTS = 20_000


def test_restart_from_checkpoint_after_kill(stack):
    cfg = stack.job_config("restart", partitions=2, flink__checkpoint_interval_ms=1000)
    job, reader = stack.start_job(cfg)
    restarted = None
    try:
        coords: list[str] = []
        producer = threading.Thread(target=lambda: coords.extend(produce(
            cfg.kafka.bootstrap_servers, cfg.kafka.input_topic,
            demo_data.events(N_EVENTS, stack.entities, seed=31), rate=2500, encode=demo_data.encode)))
        producer.start()
        # wait until the job is mid-stream: predictions flowing; then until a checkpoint has been
        # *triggered* after those predictions were visible: it covers their input offsets
        deadline = time.monotonic() + 300
        while len(reader.snapshot().predictions) < 3000:
            job.check_alive()
            assert time.monotonic() < deadline, "the job never got going"
            time.sleep(0.1)
        covered = set(reader.snapshot().predictions)
        at_that_time = checkpoint_number(latest_checkpoint(cfg.flink.checkpoint_dir))
        while checkpoint_number(latest_checkpoint(cfg.flink.checkpoint_dir)) < at_that_time + 2:
            job.check_alive()
            assert time.monotonic() < deadline, "no checkpoint completed after the first predictions"
            time.sleep(0.05)
        job.kill()
        killed_at = sum(not p["event_id"].startswith("warmup-") for p in reader.snapshot().predictions.values())
        checkpoint = latest_checkpoint(cfg.flink.checkpoint_dir)
        restarted = stack.job(cfg, "--restore", "latest").start()
        producer.join(timeout=120)
        assert len(coords) == N_EVENTS
        tally = reader.wait_for(set(coords), timeout_s=600, stall_s=180, check=restarted.check_alive)
        missing = tally.missing(set(coords))
        assert killed_at < N_EVENTS, "the kill happened after everything was scored: not mid-stream"
        assert not missing, f"{len(missing)} inputs lost across the restart, e.g. {sorted(missing)[:5]}"
        assert len(set(tally.predictions) & set(coords)) == N_EVENTS
        # it resumed from the checkpoint's offsets: what the checkpoint covers is not scored again
        assert not covered & tally.duplicate_ids, "records covered by the checkpoint were re-scored"
        print(f"\nkilled after {killed_at} predictions; restored from {checkpoint}; "
              f"duplicates after restart: {tally.duplicate_predictions}")
    finally:
        reader.stop()
        job.kill()
        if restarted:
            restarted.stop()
