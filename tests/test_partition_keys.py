"""How the Kafka source's keys spread partitions over subtasks (operators/flink/partition_keys.py),
checked against Flink's own key-group assignment in the JVM."""
from __future__ import annotations

from collections import Counter

import pytest

from operators.flink.partition_keys import (
    check_with_flink, key_group, partition_keys, subtask_of, target_key_groups,
)

M = 128


def per_subtask(keys: dict[int, int], parallelism: int, max_parallelism: int = M) -> list[int]:
    owners = Counter(subtask_of(k, max_parallelism, parallelism) for k in keys.values())
    return [owners.get(i, 0) for i in range(parallelism)]


def test_key_groups_are_flinks():
    """The Python key-group computation agrees with KeyGroupRangeAssignment on the Row PyFlink
    keys by, for small, large and negative keys and several max parallelisms."""
    keys = {i: k for i, k in enumerate([*range(300), 2**31 - 1, -(2**31), -1, -62, 123_456_789])}
    for max_parallelism in (128, 100, 32768):
        check_with_flink(keys, max_parallelism)


def test_bare_partition_numbers_spread_unevenly():
    """Why the source does not key by the partition number: 8 partitions on 2 subtasks, 5 + 3."""
    bare = {p: p for p in range(8)}
    assert per_subtask(bare, 2) == [5, 3]


@pytest.mark.parametrize("parallelism", [2, 4, 8, 16])
def test_partitions_spread_within_one_at_powers_of_two(parallelism):
    for count in range(1, M + 1):
        spread = per_subtask(partition_keys(list(range(count)), M), parallelism)
        assert max(spread) - min(spread) <= 1, (count, spread)


@pytest.mark.parametrize("parallelism", [3, 5, 6, 7])
def test_partitions_spread_nearly_evenly_at_other_parallelisms(parallelism):
    for count in range(1, 65):
        spread = per_subtask(partition_keys(list(range(count)), M), parallelism)
        assert max(spread) - min(spread) <= 3, (count, spread)
    assert per_subtask(partition_keys([0, 1, 2], M), 3) == [1, 1, 1]


def test_examples_from_the_cluster_test():
    assert per_subtask(partition_keys(list(range(4)), M), 2) == [2, 2]
    assert per_subtask(partition_keys(list(range(8)), M), 2) == [4, 4]


def test_keys_are_unique_and_stable():
    """A partition's key depends on its number and the max parallelism only: offsets in keyed
    state follow their partition when partitions are added or the job is rescaled."""
    four, eight, many = (partition_keys(list(range(n)), M) for n in (4, 8, 300))
    assert four == {p: eight[p] for p in range(4)} == {p: many[p] for p in range(4)}
    assert len(set(many.values())) == 300
    assert partition_keys([5, 2], M) == {5: eight[5], 2: eight[2]}
    assert target_key_groups(4, M) == target_key_groups(8, M)[:4]
