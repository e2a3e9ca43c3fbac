"""ServeOptions and `fewshot serve`: every bad setting is refused before a model is loaded."""

from __future__ import annotations

import sys

import pytest

from fewshot.errors import FewshotError
from fewshot.serve.options import API_KEY_ENV, ServeOptions


@pytest.fixture
def no_load(monkeypatch):
    import fewshot

    monkeypatch.setattr(fewshot, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.delenv(API_KEY_ENV, raising=False)


@pytest.mark.parametrize("args", [
    ["--api-key", ""], ["--api-key", "  "], ["--api-key-file", "nope"], ["--api-key-file", "{empty}"],
    ["--max-body-mb", "0"], ["--drain-seconds", "-1"], ["--max-batch", "0"], ["--max-queue", "0"],
    ["--step-tokens", "0"], ["--request-timeout", "0"], ["--port", "70000"], ["--port", "-1"],
    ["--api-key", "a", "--api-key-file", "{empty}"], ["--api-key-file", "{dir}"], ["--log-level", "loud"],
    ["--prefix-cache-mb", "-1"], ["--prefix-cache-mb", "nan"],
])
def test_bad_settings_are_one_error_line_and_exit_2(args, tmp_path, no_load, monkeypatch, capsys):
    from fewshot.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    argv = [a.replace("{empty}", str(empty)).replace("{dir}", str(tmp_path)) for a in args]
    monkeypatch.setattr(sys, "argv", ["fewshot", "serve", str(tmp_path), *argv])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: serve:"), lines


@pytest.mark.parametrize("args", [["--api-key", ""], ["--max-body-mb", "0"], ["--drain-seconds", "-1"], ["--port", "70000"]])
def test_python_m_fewshot_serve_refuses_the_same(args, tmp_path, no_load, capsys):
    from fewshot.serve.__main__ import main

    assert main([str(tmp_path), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: serve:"), lines


def test_both_shells_offer_every_setting():
    import dataclasses

    from typer.main import get_command

    from fewshot.cli import app

    flags = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(ServeOptions) if "help" in f.metadata}
    serve = get_command(app).commands["serve"]
    assert flags <= {opt for param in serve.params for opt in param.opts}
    assert {"--api-key-file", "--max-body-mb", "--drain-seconds"} <= flags


def test_an_empty_key_in_the_environment_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, " ")
    with pytest.raises(FewshotError, match=API_KEY_ENV):
        ServeOptions().resolved(tmp_path)


def test_the_key_comes_from_the_option_the_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServeOptions().resolved(tmp_path).api_key == "from-env"
    assert ServeOptions(api_key=" given ").resolved(tmp_path).api_key == "given"
    (tmp_path / "key").write_text("  from-file \nsecond line\n")
    resolved = ServeOptions(api_key_file=tmp_path / "key").resolved(tmp_path / "run")
    assert resolved.api_key == "from-file" and resolved.model_name == "run"
    monkeypatch.delenv(API_KEY_ENV)
    assert ServeOptions().resolved(tmp_path).api_key is None
