"""Unit tests of per-row work on a small thread pool: order kept, memory bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tasks.infra.parallel import map_ordered


def test_results_come_back_in_input_order_from_several_threads() -> None:
    names: set[str] = set()

    def slow_square(x: int) -> int:
        names.add(threading.current_thread().name)
        time.sleep(0.01 * (x % 3))  # later parts often finish first
        return x * x

    assert list(map_ordered(slow_square, range(20), threads=3)) == [
        x * x for x in range(20)
    ]
    assert len(names) > 1 and all(n.startswith("tweetflow-part") for n in names)


@pytest.mark.parametrize(("in_flight", "bound"), [(None, 4), (2, 2), (1, 2)])
def test_no_more_parts_are_taken_than_allowed_in_flight(
    in_flight: int | None, bound: int
) -> None:
    taken = yielded = most = 0

    def parts() -> Iterator[int]:
        nonlocal taken, most
        for i in range(12):
            taken += 1
            most = max(most, taken - yielded)
            yield i

    for _ in map_ordered(lambda x: x, parts(), threads=2, in_flight=in_flight):
        yielded += 1
    assert yielded == 12
    assert most <= bound  # in_flight below the thread count still uses them all


def test_an_error_in_a_part_reaches_the_caller() -> None:
    def fail_on_three(x: int) -> int:
        if x == 3:
            raise ValueError("part 3")
        return x

    with pytest.raises(ValueError, match="part 3"):
        list(map_ordered(fail_on_three, range(6), threads=2))
