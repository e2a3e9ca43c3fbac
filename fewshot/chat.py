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

Templates come from files a user downloaded, so they are code we do not trust. They run in
Jinja's immutable sandbox (they can format strings, never touch Python objects or files),
and in a separate worker process (fewshot/template_worker.py) with a memory
limit, a time limit (`RENDER_SECONDS`) and an output bound (`MAX_PROMPT_CHARS`): whatever a
template does, the caller gets a FewshotError naming the template, never a traceback, a
hang or an exhausted machine. Our own DEFAULT_TEMPLATE renders in-process.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fewshot.errors import FewshotError

RENDER_SECONDS = 5.0  # a real template renders in milliseconds
MAX_PROMPT_CHARS = 4_000_000  # ~1M tokens: far past any context, well short of a memory problem
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


def render_chat(messages: Sequence[Message], template: str | None, source: str = "the model",
                add_generation_prompt: bool = True) -> ChatPrompt:
    """The prompt that asks the model for the assistant's next turn; `source` names the template's owner in errors.

    With add_generation_prompt=False, the conversation as it stands (what fine-tuning renders)."""
    if not messages:
        raise FewshotError("chat: messages must not be empty")
    for message in messages:
        if message.role not in ROLES:
            raise FewshotError(f"chat: unknown role {message.role!r}; use one of {', '.join(ROLES)}")
    turns = [{"role": m.role, "content": m.content} for m in messages]
    if template is None:
        return ChatPrompt(_render_default(turns, add_generation_prompt), DEFAULT_STOP)
    return ChatPrompt(_WORKER.render(template, turns, source, add_generation_prompt), ())


def _render_default(turns: list[dict[str, str]], add_generation_prompt: bool) -> str:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return environment.from_string(DEFAULT_TEMPLATE).render(messages=turns, add_generation_prompt=add_generation_prompt)
    except TemplateError as error:  # a bug here, but one with a readable message
        raise FewshotError(f"chat: the default chat template failed: {error}") from None


class _TemplateWorker:
    """One long-lived worker process, started on first use and restarted after a kill.

    Calls are serialised by a lock: rendering takes milliseconds, and one process keeps
    a server's memory flat whatever its concurrency.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._buffer = b""

    def render(self, template: str, turns: list[dict[str, str]], source: str, add_generation_prompt: bool) -> str:
        request = json.dumps({"template": template, "messages": turns, "max_chars": MAX_PROMPT_CHARS,
                              "add_generation_prompt": add_generation_prompt}) + "\n"
        with self._lock:
            answer = self._ask(request.encode(), source)
        if "raised" in answer:
            raise FewshotError(f"chat: {answer['raised']} (raised by the chat template of {source})")
        if "error" in answer:
            raise FewshotError(f"chat: the chat template of {source} failed: {answer['error']}")
        return answer["text"]

    def _ask(self, request: bytes, source: str) -> dict:
        process = self._start()
        try:
            process.stdin.write(request)
            process.stdin.flush()
            line = self._read_line(process, time.monotonic() + RENDER_SECONDS)
        except BrokenPipeError:
            line = None
        if line is None:
            code = process.poll()
            self._kill()
            why = f"took longer than {RENDER_SECONDS:g} s" if code is None else f"crashed the renderer (exit status {code})"
            raise FewshotError(f"chat: the chat template of {source} failed: it {why}")
        return json.loads(line)

    def _read_line(self, process: subprocess.Popen, deadline: float) -> bytes | None:
        """The worker's next answer, or None at the deadline or if it died."""
        fd = process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _start(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            script = Path(__file__).with_name("template_worker.py")
            # -I: no user site, no PYTHON* variables, not the caller's directory on sys.path.
            self._process = subprocess.Popen([sys.executable, "-I", str(script)], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self._buffer = b""
        return self._process

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
            self._buffer = b""


_WORKER = _TemplateWorker()
atexit.register(_WORKER._kill)
