"""Chat messages -> one prompt string, with the model's own chat template.

Imported models carry a Jinja chat template (GGUF's `tokenizer.chat_template`, HF's
`chat_template`); `fewshot chat` and `/v1/chat/completions` render messages with it. A
model trained here has none and gets `DEFAULT_TEMPLATE`, a plain transcript:

    System: You are terse.

    User: Hi!
    Assistant: Hello.
    User: What is 2+2?
    Assistant:

and generation stops where the model starts the user's next turn ("\\nUser:").

Templates come from files a user downloaded, so they run in Jinja's immutable sandbox:
they can format strings, never touch Python objects or files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fewshot.errors import FewshotError

ROLES = ("system", "user", "assistant")
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}System: {{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOP = ("\nUser:",)


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]  # where the assistant's turn ends, beyond the tokenizer's stop tokens


def render_chat(messages: Sequence[Message], template: str | None) -> ChatPrompt:
    """The prompt that asks the model for the assistant's next turn."""
    if not messages:
        raise FewshotError("chat: messages must not be empty")
    for message in messages:
        if message.role not in ROLES:
            raise FewshotError(f"chat: unknown role {message.role!r}; use one of {', '.join(ROLES)}")
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise_from_template
    try:
        text = environment.from_string(template or DEFAULT_TEMPLATE).render(
            messages=[{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True)
    except TemplateError as error:
        raise FewshotError(f"chat: the model's chat template failed: {error}") from None
    return ChatPrompt(text, () if template else DEFAULT_STOP)


def _raise_from_template(message: str) -> None:
    # HF templates call raise_exception("Conversation roles must alternate ...").
    raise FewshotError(f"chat: {message}")
