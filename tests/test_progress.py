"""The progress bars' shared rate column (fewshot.progress)."""

from hypothesis import given
from hypothesis import strategies as st
from rich.progress import Progress

from fewshot.progress import RateColumn


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(per_second=st.integers(1, 10**9), seconds=st.integers(2, 20))
def test_the_rate_column_shows_items_per_second_in_its_unit(per_second, seconds):
    clock = _Clock()
    column = RateColumn("M tokens", scale=1e6)
    with Progress(column, get_time=clock, disable=True) as bar:
        task = bar.add_task("scan", total=None)
        assert column.render(bar.tasks[0]).plain == ""  # no rate before two steps give it a time span
        for _ in range(seconds):
            clock.now += 1.0
            bar.advance(task, per_second)
        assert column.render(bar.tasks[0]).plain == f"{per_second / 1e6:,.1f} M tokens/s"
