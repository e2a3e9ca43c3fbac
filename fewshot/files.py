"""Durable file writes: temp file, fsync, rename. Torch-free, so every module can use it.

A reader (or a crash, or `kill -9`) sees either the old file or the complete new one,
never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fewshot.errors import FewshotError


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_permissions(path: Path) -> None:
    """Give a file the mode a plain open() would (0666 less the umask).

    For writers that create files private (0600), as mkstemp and safetensors do.
    """
    path.chmod(0o666 & ~_umask())


# Temporaries are hidden and named after their target, so a directory's leftovers (from a
# `kill -9` mid-write) can be told from its real files and removed: `.NAME.XXXX.tmp` files,
# `.NAME.tmp-XXXX` directories.
TMP_SUFFIX = ".tmp"
STAGING_INFIX = ".tmp-"


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete what an interrupted atomic_write or staging_dir left in `directory`; return it.

    Only for a directory this process alone writes to: another writer's temporaries are live.
    """
    removed = []
    for path in directory.glob(".*") if directory.is_dir() else ():
        if path.is_file() and path.name.endswith(TMP_SUFFIX):
            path.unlink(missing_ok=True)
        elif path.is_dir() and STAGING_INFIX in path.name:
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        removed.append(path)
    return removed


def staging_dir(final: Path) -> Path:
    """A hidden temporary directory beside `final`, to fill and then rename into place.

    mkdtemp makes it private (0700); it gets the permissions a plain mkdir would, so the
    renamed result is as readable as any other directory the user creates.
    """
    directory = Path(tempfile.mkdtemp(prefix=f".{final.name}{STAGING_INFIX}", dir=final.parent))
    directory.chmod(0o777 & ~_umask())
    return directory


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        default_permissions(tmp)  # mkstemp's 0600 would survive the rename
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FewshotError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FewshotError(f"{path}: not valid JSON ({error})") from None


def read_jsonl(path: str | Path, what: str) -> list[tuple[str, Any]]:
    """(where, record) for every non-blank line of a JSON Lines file; `where` is "path:LINE".

    A missing, unreadable or non-UTF-8 file, or a line that is not JSON, is one error;
    `what` names the file's role ("examples", "probes") in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FewshotError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise FewshotError(f"{path} is a directory; give a JSONL file of {what}") from None
    except UnicodeDecodeError as error:
        raise FewshotError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise FewshotError(f"{path}: cannot read ({error.strerror})") from None
    records = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON may hold U+2028
        if not line.strip():
            continue
        try:
            records.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise FewshotError(f"{path}:{number}: not JSON ({error.msg})") from None
    if not records:
        raise FewshotError(f"{path}: no {what} (expected one JSON object per line)")
    return records


def check_creatable(path: Path) -> None:
    """Refuse a path that could not be created: a file in the way above it, or no write permission.

    Commands call this (through the two checks below) before any work starts, so a bad
    output path costs nothing, instead of failing after an evaluation or a training run.
    """
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FewshotError(f"{path} cannot be created: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FewshotError(f"{path} cannot be created: no permission to write in {ancestor}")


def check_new_dir(out: Path) -> None:
    """Refuse to write into anything but a missing or empty directory: nothing is overwritten."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FewshotError(f"{out} is a file; pick a new directory")
    if out.exists() and any(out.iterdir()):
        raise FewshotError(f"{out} already exists; pick a new directory")
    check_creatable(out)


def check_output_file(path: Path, overwrite: bool = False) -> None:
    """Refuse an output file path that is a directory, cannot be created, or exists (unless `overwrite`)."""
    path = Path(path)
    if path.is_dir():
        raise FewshotError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise FewshotError(f"{path} already exists; pass --overwrite to replace it, or choose another path")
    check_creatable(path)


def publish_dir(out: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a staging directory beside `out`, make it durable, then rename it to `out` at once.

    An interrupted import or export leaves either nothing or the whole directory.
    """
    check_new_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out)
    try:
        fill(staging)
        for path in staging.rglob("*"):
            fsync_file(path) if path.is_file() else fsync_dir(path)
        fsync_dir(staging)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
        fsync_dir(out.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
