"""The `fewshot` command: a thin typer shell over the library, one module per command group.

Each command maps its options onto one library call. A `FewshotError` becomes
`error: <message>` and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

# Each module registers its commands; `--help` lists them in this order, the pipeline's.
from fewshot.cli import train, finetune, generate, evaluation, serve, convert, icl, bench, compare, soup, palms, sweep  # noqa: F401, I001
from fewshot.cli.app import app, err
from fewshot.errors import FewshotError


def main() -> None:
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(N) comes back as N here, not raised
    except FewshotError as error:
        err.print(f"error: {error}", markup=False, highlight=False)
        sys.exit(2)
    except typer.Abort:  # Ctrl-C outside training, which handles it itself
        err.print("aborted")
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as error:  # usage errors: unknown option, bad value, missing argument
        if type(error).__name__ == "NoArgsIsHelpError":  # typer has already printed the help
            sys.exit(0)
        err.print(f"error: {error.format_message()} (see --help)", markup=False, highlight=False)
        sys.exit(getattr(error, "exit_code", 2))
    except BrokenPipeError:  # `fewshot generate ... | head`
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
