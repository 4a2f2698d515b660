"""Row-range partitions: planning, checking coverage, and re-cutting parts
into the row groups the in-process path writes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.infra.partitioned import (
    PartOutput,
    check_rows,
    fixed_sizes,
    plan_ranges,
    rebatch,
)


def test_ranges_cover_the_rows_once_in_order() -> None:
    ranges = plan_ranges(1050, 400)
    assert [(r.start, r.stop) for r in ranges] == [(0, 400), (400, 800), (800, 1050)]
    assert [r.number for r in ranges] == [0, 1, 2]
    assert {r.of for r in ranges} == {3}
    assert [(r.start, r.stop) for r in plan_ranges(0, 400)] == [(0, 0)]


def outputs(spans: list[tuple[int, int]]) -> list[PartOutput]:
    return [
        PartOutput(number=i, start=a, stop=b, parts={})
        for i, (a, b) in enumerate(spans)
    ]


def test_coverage_is_checked() -> None:
    check_rows("stage", outputs([(400, 800), (0, 400)]), 800)
    with pytest.raises(RuntimeError, match="miss or repeat rows at 400"):
        check_rows("stage", outputs([(0, 400), (500, 800)]), 800)
    with pytest.raises(RuntimeError, match="cover 400 of 800 rows"):
        check_rows("stage", outputs([(0, 400)]), 800)


def test_parts_are_recut_into_the_given_row_groups() -> None:
    values = list(range(23))
    parts = [
        pa.table({"v": values[a:b]}) for a, b in ((0, 7), (7, 7), (7, 16), (16, 23))
    ]
    sizes = fixed_sizes(23, 10)
    assert sizes == [10, 10, 3]
    cut = list(rebatch(parts, sizes))
    assert [t.num_rows for t in cut] == sizes
    assert [v for t in cut for v in t.column("v").to_pylist()] == values
    assert all(t.column("v").num_chunks == 1 for t in cut)


def test_parts_that_do_not_add_up_are_refused() -> None:
    parts = [pa.table({"v": [1, 2, 3]})]
    with pytest.raises(RuntimeError, match="fewer rows"):
        list(rebatch(parts, [2, 2]))
    with pytest.raises(RuntimeError, match="more rows"):
        list(rebatch(parts, [2]))
