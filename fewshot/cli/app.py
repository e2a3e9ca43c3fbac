"""The typer apps every command group registers on, and the two consoles they print to."""

from __future__ import annotations


import typer
from rich.console import Console

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Train, prompt, evaluate and serve GPT-3-style language models.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure speed, side by side.")
app.add_typer(bench_app, name="bench")
icl_app = typer.Typer(no_args_is_help=True, help="In-context learning: the meta-training mixture, its recipe, held-out evaluation.")
app.add_typer(icl_app, name="icl")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def unescape(text: str) -> str:
    """Shells make newlines awkward to type, so `\\n` and `\\t` in prompts and stops mean them."""
    return text.replace("\\n", "\n").replace("\\t", "\t")
