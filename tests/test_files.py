"""fewshot.files: the output-path checks every command runs before it starts work."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fewshot.errors import FewshotError
from fewshot.files import check_creatable, check_new_dir, check_output_file

NAMES = st.lists(st.text(alphabet="abcxyz_", min_size=1, max_size=6), min_size=1, max_size=4)


@given(NAMES, st.integers(min_value=0, max_value=3))
def test_a_path_below_a_file_is_refused_whatever_the_depth(tmp_path_factory: pytest.TempPathFactory, names: list[str],
                                                           at: int) -> None:
    root = tmp_path_factory.mktemp("paths")
    at = min(at, len(names) - 1)
    blocker = root.joinpath(*names[: at + 1])
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    target = blocker.joinpath("below", "out.json")
    for check in (check_creatable, check_new_dir, check_output_file):
        with pytest.raises(FewshotError, match=f"{blocker} is a file"):
            check(target)
    assert blocker.read_text() == "in the way" and not target.parent.exists()


def test_an_output_file_that_exists_is_kept_unless_overwrite(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text("kept")
    with pytest.raises(FewshotError, match="already exists; pass --overwrite"):
        check_output_file(results)
    check_output_file(results, overwrite=True)
    check_output_file(tmp_path / "new" / "deeper" / "results.json")  # missing parents are fine: they get made
    assert results.read_text() == "kept" and not (tmp_path / "new").exists()


def test_a_directory_is_not_an_output_file_even_with_overwrite(tmp_path: Path) -> None:
    with pytest.raises(FewshotError, match="is a directory; give a file name"):
        check_output_file(tmp_path, overwrite=True)


def test_a_new_dir_may_be_missing_or_empty_never_a_file_or_full(tmp_path: Path) -> None:
    check_new_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    check_new_dir(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FewshotError, match="already exists"):
        check_new_dir(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FewshotError, match="is a file"):
        check_new_dir(tmp_path / "file")
