"""`python -m fewshot.serve RUN --port 8000`: the options of `fewshot serve`, from the same fields.

Both read ServeOptions' fields, so a setting is still declared once; this shell exists
because the serve stage may not import the CLI (tests/test_layout.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from fewshot.errors import FewshotError
from fewshot.serve.options import ServeOptions
from fewshot.serve.server import run_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fewshot.serve", description=run_server.__doc__)
    parser.add_argument("run_dir", type=Path)
    hints = typing.get_type_hints(ServeOptions)
    for field in dataclasses.fields(ServeOptions):
        if "help" in field.metadata:
            hint = hints[field.name]
            flag, shown = f"--{field.name.replace('_', '-')}", f"{field.metadata['help']} Default: {field.default}."
            if typing.get_origin(hint) is tuple:  # tuple[str, ...]: a repeatable option
                parser.add_argument(flag, type=typing.get_args(hint)[0], action="append", default=argparse.SUPPRESS,
                                    help=shown)
                continue
            kind = next(t for t in (*typing.get_args(hint), hint) if t is not type(None))
            if kind is bool:  # --compile / --no-compile, as typer spells it
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=shown)
                continue
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=shown)
    given = vars(parser.parse_args(argv))
    try:
        run_server(given.pop("run_dir"), ServeOptions(**given))
    except FewshotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
