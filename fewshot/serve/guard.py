"""`Guard`: what every request passes before any route runs, as pure ASGI middleware.

In this order, each as cheap as it can be:
1. /v1/*, /tokenize and /detokenize need the API key (when one is set), compared in constant
   time, before a byte of the body is read: an unauthenticated client cannot make the server
   parse anything. /health, /metrics and the Playground page are open, as a load balancer,
   Prometheus and a browser reach them without a key (the page asks for it).
2. The body may be at most `limit` bytes: a Content-Length over it gets 413 at once; a
   chunked body is counted as it arrives and cut off at the limit, never read past it.
3. An exception that is not ours (a bug) becomes a 500 whose message says only "internal
   error"; the traceback goes to the log, once. The exception's text could hold the
   client's data or the server's internals, so it never goes to the client.

It sits inside Starlette's ServerErrorMiddleware, which would re-raise a bug to uvicorn
(a second traceback, "Exception in ASGI application"): catching it here logs it once.
"""

from __future__ import annotations

import json
import logging
import secrets

from fewshot.serve.protocol import error_body

log = logging.getLogger("fewshot.serve")
KEYED = frozenset({"/tokenize", "/detokenize"})  # besides /v1/*


class _TooLarge(Exception):
    pass


def _error(message: str, kind: str, code: str) -> bytes:
    return json.dumps(error_body(message, kind, None, code)).encode()


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app, limit: int, api_key: str | None) -> None:
        self.app, self.limit = app, limit
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected is not None and (scope["path"].startswith("/v1/") or scope["path"] in KEYED):
            if not secrets.compare_digest(headers.get(b"authorization", b""), self.expected):
                await _respond(send, 401, _error("Incorrect or missing API key; send it as 'Authorization: Bearer <key>'",
                                                 "invalid_request_error", "invalid_api_key"))
                return
        too_large = _error(f"The request body is larger than the limit of {self.limit} bytes (--max-body-mb)",
                           "invalid_request_error", "request_too_large")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            if length.isdigit():
                await _respond(send, 413, too_large, [(b"connection", b"close")])
            else:
                await _respond(send, 400, _error("Content-Length is not a number", "invalid_request_error",
                                                 "invalid_value"), [(b"connection", b"close")])
            return

        received, over, started = 0, False, False

        async def counted_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if over:  # what the app says about the cut-off body is replaced by the 413 below
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if over:
                pass
            else:
                log.exception("internal error in %s %s", scope.get("method"), scope.get("path"))
                if not started:
                    await _respond(send, 500, _error("internal error; see the server log", "server_error",
                                                     "internal_error"))
                return
        if over and not started:
            await _respond(send, 413, too_large, [(b"connection", b"close")])
