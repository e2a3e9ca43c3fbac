"""`python tests/e2e/kill_at.py WINDOW STEP fewshot-args...`: the real CLI, `kill -9`ed inside
one checkpoint-write window of the save at STEP.

The windows, in the order a save passes them (fewshot/runs.py save_checkpoint):
- staging: the step's files are written into the hidden staging directory, not yet renamed;
- renamed: the step directory is in place, LATEST still names the step before;
- latest-temp: LATEST's new text is in its temporary file, not yet renamed;
- weights-temp: the run's model.safetensors is in its temporary file, not yet renamed.

The fault is injected from outside: os.replace and torch.save are wrapped here, in this
process only, so the code under test is the shipped code.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch


def main() -> None:
    window, step, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    step_name = f"step_{step:06d}"
    replace, save = os.replace, torch.save
    reached = {"latest": False}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def replace_then_maybe_die(src, dst, *rest, **kw):
        src, dst = Path(src), Path(dst)
        if window == "latest-temp" and dst.name == "LATEST" and src.read_text().strip() == step_name:
            die()
        if window == "weights-temp" and dst.name == "model.safetensors" and reached["latest"]:
            die()
        replace(src, dst, *rest, **kw)
        if dst.name == "LATEST" and dst.read_text().strip() == step_name:
            reached["latest"] = True
        if window == "renamed" and dst.name == step_name:
            die()

    def save_then_maybe_die(obj, f, *rest, **kw):
        save(obj, f, *rest, **kw)
        path = Path(f)
        if window == "staging" and path.name == "trainer.pt" and path.parent.name.startswith(f".{step_name}."):
            die()

    assert window in ("staging", "renamed", "latest-temp", "weights-temp"), window
    os.replace, torch.save = replace_then_maybe_die, save_then_maybe_die
    sys.argv = ["fewshot", *args]
    from fewshot.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
