"""`fewshot serve`; `python -m fewshot.serve` is this same command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fewshot.cli.app import app
from fewshot.cli.options import config_options
from fewshot.serve.options import ServeOptions


@app.command()
@config_options(ServeOptions)
def serve(run: Annotated[Path, typer.Argument(help="Run directory.")], given: dict[str, Any]) -> None:
    """Serve a model behind OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models."""
    from fewshot.serve import run_server

    run_server(run, ServeOptions(**given))
