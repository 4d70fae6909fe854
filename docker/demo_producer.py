"""Produce demo transactions (1 % malformed or for unknown entities) at a steady rate, forever.

    python docker/demo_producer.py --bootstrap-servers kafka:9092 --topic events --rate 200
"""
from __future__ import annotations

import argparse
import itertools

from jobs import demo_data
from jobs.producer import produce


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap-servers", default="kafka:9092")
    p.add_argument("--topic", default="events")
    p.add_argument("--rate", type=float, default=200, help="events per second")
    p.add_argument("--entities", type=int, default=100_000)
    p.add_argument("--chunk", type=int, default=1000)
    args = p.parse_args()
    for seed in itertools.count():
        batch, _ = demo_data.with_bad_events(demo_data.events(args.chunk, args.entities, seed, f"evt{seed}"),
                                             args.entities, salt=seed * args.chunk)
        produce(args.bootstrap_servers, args.topic, batch, rate=args.rate,
                encode=demo_data.encode)
        print(f"produced {(seed + 1) * args.chunk:,} events", flush=True)


if __name__ == "__main__":
    main()
