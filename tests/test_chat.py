"""fewshot.chat: messages -> one prompt, through the model's template in Jinja's sandbox."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fewshot.errors import FewshotError
import time

from fewshot import chat
from fewshot.chat import DEFAULT_STOP, Message, render_chat


def test_the_default_transcript_ends_in_the_assistants_turn_and_stops_at_the_next_user_turn() -> None:
    prompt = render_chat([Message("system", "You are terse."), Message("user", "Hi!"), Message("assistant", "Hello."),
                          Message("user", "What is 2+2?")], None)
    assert prompt.text == "System: You are terse.\n\nUser: Hi!\nAssistant: Hello.\nUser: What is 2+2?\nAssistant:"
    assert prompt.stop == DEFAULT_STOP and "\nUser:" in prompt.stop


@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(alphabet=st.characters(blacklist_categories=["Cs"]))),
                min_size=1, max_size=6))
def test_every_message_appears_in_order_in_the_default_transcript(turns: list[tuple[str, str]]) -> None:
    text = render_chat([Message(role, content) for role, content in turns], None).text
    position = 0
    for role, content in turns:
        line = f"{role.capitalize()}: {content}\n"
        found = text.find(line, position)
        assert found >= position, (line, text)
        position = found + len(line)
    assert text.endswith("Assistant:")


def test_a_models_own_template_is_used_and_brings_no_transcript_stop() -> None:
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    prompt = render_chat([Message("user", "Hi")], template)
    assert prompt.text == "<|user|>Hi<|assistant|>" and prompt.stop == ()


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",              # reaching Python's object graph
    "{{ messages.__class__.__init__.__globals__ }}",
    "{% for m in messages %}{{ m.update({'role': 'x'}) }}{% endfor %}",   # mutating the input (immutable sandbox)
])
def test_a_template_cannot_reach_python_objects(template: str) -> None:
    with pytest.raises(FewshotError, match="chat template of the model failed"):
        render_chat([Message("user", "Hi")], template)


def test_template_errors_and_raise_exception_become_fewshot_errors() -> None:
    with pytest.raises(FewshotError, match="chat template of the model failed"):
        render_chat([Message("user", "Hi")], "{% for m in messages %}")  # never closed
    with pytest.raises(FewshotError, match="roles must alternate"):
        render_chat([Message("user", "Hi")], "{{ raise_exception('Conversation roles must alternate') }}")


def test_unknown_roles_and_empty_conversations_are_refused() -> None:
    with pytest.raises(FewshotError, match="unknown role 'tool'"):
        render_chat([Message("tool", "42")], None)
    with pytest.raises(FewshotError, match="must not be empty"):
        render_chat([], None)


@pytest.mark.parametrize("template, reason", [
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{{ 1 + 'a' }}", "TypeError"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ("{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
    ("{{ 'x' * 10**10 }}", "MemoryError"),  # the worker's address-space limit
    ("{% for i in range(99999) %}{{ 'x' * 99999 }}{% endfor %}", "longer than"),  # the output bound, met while streaming
])
def test_any_failure_of_a_template_is_one_fewshot_error_naming_it(template: str, reason: str) -> None:
    with pytest.raises(FewshotError, match=f"chat template of runs/x failed: .*{reason}"):
        render_chat([Message("user", "Hi")], template, "runs/x")


def test_a_template_that_runs_too_long_is_killed_and_the_next_render_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat, "RENDER_SECONDS", 0.5)
    endless = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    with pytest.raises(FewshotError, match="took longer than 0.5 s"):
        render_chat([Message("user", "Hi")], endless, "runs/x")
    assert time.monotonic() - start < 3
    assert render_chat([Message("user", "Hi")], "<{{ messages[0]['content'] }}>").text == "<Hi>"


def test_a_renderer_killed_between_calls_is_replaced() -> None:
    render_chat([Message("user", "Hi")], "{{ 'warm' }}")
    chat._WORKER._process.kill()  # as the OOM killer would
    chat._WORKER._process.wait()
    assert render_chat([Message("user", "Hi")], "{{ 'again' }}").text == "again"
