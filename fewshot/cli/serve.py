"""`fewshot serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fewshot.cli.app import app


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    api_key: Annotated[Optional[str], typer.Option(help="Require `Authorization: Bearer KEY`.")] = None,
    max_batch: Annotated[int, typer.Option(help="Sequences decoded together.")] = 32,
    max_queue: Annotated[int, typer.Option(help="Waiting requests beyond which the server answers 429.")] = 256,
    model_name: Annotated[Optional[str], typer.Option(help="The name clients use in `model` (default: the directory name).")] = None,
    step_tokens: Annotated[int, typer.Option(help="Token budget per engine step (prefill chunks + decodes).")] = 512,
    request_timeout: Annotated[float, typer.Option(help="Seconds before a request is abandoned.")] = 600.0,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Serve a model behind OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models."""
    from fewshot.serve import run_server

    run_server(run, host=host, port=port, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
               model_name=model_name, device=device, step_tokens=step_tokens, request_timeout=request_timeout)
