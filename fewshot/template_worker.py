"""The process that renders a model's chat template: one JSON line in, one JSON line out.

fewshot.chat starts it as a plain script (`python -I template_worker.py`), so it
imports nothing but Jinja: a template is code from a file a user downloaded, and whatever
it does (divide by zero, recurse, loop for an hour, build a gigabyte string) happens here,
under a memory limit, where the parent can time it out and kill it.

    in:  {"template": "...", "messages": [{"role": ..., "content": ...}], "add_generation_prompt": true, "max_chars": N}
    out: {"text": "..."}  or  {"error": "ZeroDivisionError: division by zero"}
"""

from __future__ import annotations

import json
import resource
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment

MEMORY_LIMIT = 2**30  # bytes of address space; Python and Jinja need ~50 MB


class RaisedByTemplate(Exception):
    """HF templates call raise_exception("Conversation roles must alternate ...")."""


def _raise_exception(message: str) -> None:
    raise RaisedByTemplate(message)


def render(environment: ImmutableSandboxedEnvironment, cache: dict, request: dict) -> dict:
    template = cache.get(request["template"])
    if template is None:
        if len(cache) >= 16:  # a server has one template; a test may cycle through many
            cache.clear()
        template = cache[request["template"]] = environment.from_string(request["template"])
    # generate() yields the output piece by piece, so an endless or huge template is stopped
    # at the size bound instead of first filling memory.
    pieces, size = [], 0
    for piece in template.generate(messages=request["messages"], add_generation_prompt=request["add_generation_prompt"]):
        size += len(piece)
        if size > request["max_chars"]:
            return {"error": f"the prompt it renders is longer than {request['max_chars']:,} characters"}
        pieces.append(piece)
    return {"text": "".join(pieces)}


def main() -> None:
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ValueError, OSError):  # a lower hard limit is already in place, or the OS has none
        pass
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise_exception
    cache: dict = {}
    for line in sys.stdin:
        try:
            answer = render(environment, cache, json.loads(line))
        except RaisedByTemplate as error:
            answer = {"raised": str(error)[:500]}
        except BaseException as error:  # noqa: BLE001: any failure of the template is the answer
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            answer = {"error": f"{type(error).__name__}: {str(error)[:500]}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
