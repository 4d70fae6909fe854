"""The keys the Kafka source is keyed by, chosen so that topic partitions spread evenly over the
source's subtasks at any parallelism, and stay the same keys when the job is rescaled.

Flink puts a key in key group ``murmur(key.hashCode()) % max_parallelism`` and gives subtask ``i``
of ``P`` the contiguous key-group range starting at ``ceil(i * M / P)``. Keyed by the bare
partition number, partitions land wherever the hash puts them: 8 partitions on 2 subtasks went
5 + 3 (partitions 0-7 → subtasks 0 0 1 1 0 0 1 0). Instead, each partition is keyed by the
smallest integer in a key group chosen for it (:func:`target_key_groups`): for up to 128
partitions and ``M = 128`` the partitions per subtask differ by at most one at parallelism 2, 4,
8 and 16, and by at most 2-4 at the others up to 16 (tests/test_partition_keys.py). A
partition's key depends only on its number and ``M`` (the job pins ``pipeline.max-parallelism``),
never on the parallelism or the partition count, so the offsets kept in keyed state follow their
partitions across a rescale from a savepoint.

The key group is computed here as Flink computes it for PyFlink's ``key_by`` (the key is a
one-field ``Row`` holding a Java ``Integer``); :func:`check_with_flink` asks the JVM to confirm.
"""
from __future__ import annotations

import functools
from collections import Counter

from pyflink.datastream.functions import KeySelector

INT32 = 1 << 32


def _int32(x: int) -> int:
    x &= INT32 - 1
    return x - INT32 if x >= 1 << 31 else x


def _rotl32(x: int, r: int) -> int:
    x &= INT32 - 1
    return ((x << r) | (x >> (32 - r))) & (INT32 - 1)


def murmur_hash(code: int) -> int:
    """``org.apache.flink.util.MathUtils.murmurHash(int)``: non-negative."""
    h = (code * 0xCC9E2D51) & (INT32 - 1)
    h = (_rotl32(h, 15) * 0x1B873593) & (INT32 - 1)
    h = (_rotl32(h, 13) * 5 + 0xE6546B64) & (INT32 - 1)
    h ^= 4
    h ^= h >> 16                                   # bitMix (fmix32)
    h = (h * 0x85EBCA6B) & (INT32 - 1)
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & (INT32 - 1)
    h ^= h >> 16
    h = _int32(h)
    return h if h >= 0 else (-h if h != -(1 << 31) else 0)


def row_hash(key: int) -> int:
    """``hashCode()`` of the one-field ``Row(Integer key)`` PyFlink's ``KeyByKeySelector`` makes
    (``RowUtils.deepHashCodeRow``): ``31 * kind(INSERT = 0) + (31 * 1 + (31 + key))`` = ``62 + key``."""
    return _int32(62 + key)


def key_group(key: int, max_parallelism: int) -> int:
    return murmur_hash(row_hash(key)) % max_parallelism


def subtask_of(key: int, max_parallelism: int, parallelism: int) -> int:
    """The subtask that owns ``key`` (``KeyGroupRangeAssignment.assignKeyToParallelOperator``)."""
    return key_group(key, max_parallelism) * parallelism // max_parallelism


BALANCED_PARALLELISMS = (2, 4, 8, 3, 5, 6, 7)   # powers of two first: they must come out within one


def _van_der_corput_rank(max_parallelism: int) -> list[int]:
    """Every key group once, in base-2 van der Corput order (0, M/2, M/4, 3M/4, …): each prefix is
    spread over the key groups as evenly as can be."""
    order, seen, p = [], set(), 0
    while len(order) < max_parallelism:
        fraction, weight, q = 0.0, 0.5, p
        while q:
            fraction += weight * (q & 1)
            weight, q = weight / 2, q >> 1
        group = int(fraction * max_parallelism)
        if group not in seen:
            seen.add(group)
            order.append(group)
        p += 1
    rank = [0] * max_parallelism
    for i, group in enumerate(order):
        rank[group] = i
    return rank


@functools.lru_cache(maxsize=8)
def target_key_groups(count: int, max_parallelism: int) -> tuple[int, ...]:
    """The key groups of partitions ``0 .. count-1``, chosen one partition at a time: the group
    that keeps the partitions per subtask most even at parallelism 2, 4 and 8 (first) and 3, 5,
    6 and 7, then the least used group, then the earliest in van der Corput order. Partition
    ``p``'s group depends only on ``p`` and ``max_parallelism``."""
    rank = _van_der_corput_rank(max_parallelism)
    counts = {P: [0] * P for P in BALANCED_PARALLELISMS if P <= max_parallelism}
    owners = [{P: g * P // max_parallelism for P in counts} for g in range(max_parallelism)]
    uses = [0] * max_parallelism
    chosen: list[int] = []
    for _ in range(count):
        def cost(g: int) -> tuple:
            excess, spread = 0, 0
            for P, c in counts.items():
                o = owners[g][P]
                c[o] += 1
                gap = max(c) - min(c)
                c[o] -= 1
                excess += max(0, gap - 1) * (1_000_000 if P & (P - 1) == 0 else 1_000)
                spread += gap
            return excess + spread, uses[g], rank[g]
        group = min(range(max_parallelism), key=cost)
        chosen.append(group)
        uses[group] += 1
        for P, c in counts.items():
            c[owners[group][P]] += 1
    return tuple(chosen)


def partition_keys(partitions: list[int], max_parallelism: int) -> dict[int, int]:
    """partition → the key the source keys it by (see the module docstring): the smallest
    non-negative integer in the partition's target key group that no lower partition took."""
    if not partitions:
        return {}
    targets = target_key_groups(max(partitions) + 1, max_parallelism)
    needed = Counter(targets)
    found: dict[int, list[int]] = {}
    key = 0
    while needed:
        group = key_group(key, max_parallelism)
        if needed.get(group):
            found.setdefault(group, []).append(key)
            needed[group] -= 1
            if not needed[group]:
                del needed[group]
        key += 1
    taken: Counter = Counter()
    keys = {}
    for p, group in enumerate(targets):
        keys[p] = found[group][taken[group]]
        taken[group] += 1
    return {p: keys[p] for p in partitions}


def check_with_flink(keys: dict[int, int], max_parallelism: int) -> None:
    """Confirm with the JVM (``KeyGroupRangeAssignment`` on the ``Row`` PyFlink keys by) that
    every key lands in the key group computed here; raise if a Flink version hashes otherwise."""
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    assign = jvm.org.apache.flink.runtime.state.KeyGroupRangeAssignment.assignToKeyGroup
    for partition, key in keys.items():
        row = jvm.org.apache.flink.types.Row(1)
        row.setField(0, key)
        if assign(row, max_parallelism) != key_group(key, max_parallelism):
            raise RuntimeError(f"Flink puts the source key {key} (partition {partition}) in key group "
                               f"{assign(row, max_parallelism)}, not {key_group(key, max_parallelism)}: "
                               "operators/flink/partition_keys.py no longer matches this Flink's key hashing")


class PartitionKey(KeySelector):
    """``key_by`` selector: a partition number → its key from :func:`partition_keys`."""

    def __init__(self, keys: dict[int, int]) -> None:
        self.keys = dict(keys)

    def get_key(self, partition: int) -> int:
        return self.keys[partition]
