"""The HTTP side: FastAPI routes in OpenAI's shape over one batching engine.

    app = create_app(fewshot.load("runs/mine"), ServeOptions(model_name="mine"))

Handlers never run the model: they validate (parsing, tokenising and chat templates on a
worker thread), submit a job to the engine's thread, and await its events through an
asyncio queue, so the event loop stays free for other clients while the model computes. A client that goes away cancels its job: streams notice
on their next write, other requests through a task that waits for the disconnect.

Every error, FastAPI's own included, leaves in OpenAI's shape with a string code, and
bad input is always a 400 (FastAPI would say 422), so any OpenAI client maps it to the
right exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException

from fewshot import __version__
from fewshot.errors import FewshotError
from fewshot.serve import protocol
from fewshot.serve.engine import (
    Delta,
    Engine,
    EngineConfig,
    EngineStopped,
    Event,
    Failed,
    Finished,
    QueueFull,
    Scored,
)
from fewshot.serve.guard import Guard
from fewshot.serve.metrics import CONTENT_TYPE, CountRequests, Metrics
from fewshot.serve.options import ServeOptions
from fewshot.serve.protocol import APIError, Plan, error_body
from fewshot.serve.schemas import (
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)

STATIC = Path(__file__).with_name("static")  # the Playground: HTML, JS and CSS, no CDN
ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize", "/health",
                    "/metrics", "/openapi.json", "/docs", "/"})


ERRORS = {status: {"model": ErrorResponse, "description": description} for status, description in {
    400: "Invalid request (names the param), or context_length_exceeded",
    401: "Missing or wrong API key",
    404: "Unknown model",
    413: "The body is larger than --max-body-mb",
    429: "The queue is full; retry after Retry-After seconds",
    503: "The server is shutting down",
}.items()}
# With stream=true: server-sent events, each `data: <JSON chunk>`, the last `data: [DONE]`.
# (Before OpenAPI 3.2, the schema of an event stream describes one event.)
STREAMED = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description": "A JSON chunk, an {\"error\": ...} object, or [DONE]"}},
}}}


class _Channel:
    """Engine events into this event loop; `deliver` is called on the engine's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    def deliver(self, events: list[Event]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, events)


def create_app(lm, options: ServeOptions, engine: Engine | None = None, adapters: dict | None = None) -> FastAPI:
    """`adapters`: model name -> LM of an adapter over `lm`'s weights (LM.with_adapter)."""
    adapters = adapters or {}
    metrics = Metrics(lambda: engine.stats(), ROUTES)
    engine = engine or Engine(lm.model, lm.tokenizer, EngineConfig(
        max_batch=options.max_batch, max_queue=options.max_queue, step_tokens=options.step_tokens,
        request_timeout=options.request_timeout, prefix_cache_bytes=int(options.prefix_cache_mb * 10**6)),
        adapters={name: a.model for name, a in adapters.items()}, latency=metrics)
    if engine.latency is None:
        engine.latency = metrics
    served = [options.model_name, *adapters]
    context = lm.model.config.context

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await run_in_threadpool(engine.stop, options.drain_seconds)

    app = FastAPI(title="fewshot", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible completions and chat completions for a fewshot model.")
    app.state.engine = engine
    app.add_middleware(Guard, limit=options.max_body_bytes, api_key=options.api_key)
    app.add_middleware(CountRequests, metrics=metrics)  # added last: the outermost, so it sees Guard's answers
    _install_error_handlers(app)
    _install_openapi(app)

    def check(request: Request, model: str | None) -> str:
        """The served model's name (the base's when none is given); 404 for any other."""
        # The API key was checked before the body was read: see guard.py.
        if model is not None and model not in served:
            raise APIError(404, f"The model '{model}' does not exist; this server serves "
                                f"{', '.join(repr(name) for name in served)}", "model", "model_not_found")
        return model if model is not None else options.model_name

    def submit(plan: Plan) -> tuple:
        channel = _Channel()
        try:
            job = engine.submit(plan.request, channel.deliver)
        except QueueFull as error:
            raise APIError(429, f"The server is busy ({error}); retry shortly", None, "rate_limit_exceeded",
                           kind="rate_limit_error", headers={"Retry-After": str(options.retry_after)}) from None
        except EngineStopped as error:
            raise APIError(503, str(error), None, "server_shutting_down", kind="server_error") from None
        except FewshotError as error:
            raise protocol.bad_request(str(error), "prompt") from None
        return job, channel

    async def collect(request: Request, plan: Plan) -> list[Finished]:
        job, channel = submit(plan)
        expected = len(plan.request.prompts) * plan.request.options.n
        finished: list[Finished] = []
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job, engine))
        try:
            while len(finished) < expected:
                for event in await channel.queue.get():
                    if isinstance(event, Failed):
                        raise _failure(event)
                    if isinstance(event, Finished):
                        finished.append(event)
        finally:
            watcher.cancel()
            if len(finished) < expected:
                job.cancel()
                engine.wake()
        return finished

    def stream(plan: Plan, chunks: Callable[[Event], list[dict]], final: Callable[[int], dict]) -> StreamingResponse:
        job, channel = submit(plan)
        expected = len(plan.request.prompts) * plan.request.options.n

        async def events() -> AsyncIterator[str]:
            done, completion_tokens = 0, 0
            try:
                for chunk in chunks(None):
                    yield _sse(chunk)
                while done < expected:
                    for event in await channel.queue.get():
                        if isinstance(event, Failed):
                            yield _sse(_failure(event).body())
                            yield "data: [DONE]\n\n"
                            return
                        if isinstance(event, Finished):
                            done += 1
                            completion_tokens += len(event.token_ids)
                        for chunk in chunks(event):
                            yield _sse(chunk)
                if plan.include_usage:
                    yield _sse(final(completion_tokens))
                yield "data: [DONE]\n\n"
            finally:  # also when the client went away mid-stream (cancellation lands here)
                if done < expected:
                    job.cancel()
                    engine.wake()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def in_worker(request: Request, schema, then: Callable):
        """`then(body, model name)` of the request's body, on a worker thread: parsing,
        validating, tokenising and rendering a chat template all take time, and /health must
        still answer meanwhile."""
        raw = await request.body()  # within --max-body-mb: guard.py counted it

        def work():
            body = protocol.parse_body(raw, request.headers.get("content-type"), schema, context)
            return then(body, check(request, body.model))

        return await run_in_threadpool(work)

    async def prepare(request: Request, schema, plan_of) -> tuple:
        """Body -> (model name, plan)."""
        def planned(body, name: str) -> tuple:
            plan = plan_of(body, lm)  # adapters share the base's tokenizer and template
            if name in adapters:
                plan = dataclasses.replace(plan, request=dataclasses.replace(plan.request, adapter=name))
            return name, plan

        return await in_worker(request, schema, planned)

    # The routes read the body themselves (see in_worker), so its schema is documented by hand.
    @app.post("/v1/completions", responses={**ERRORS, 200: {"model": CompletionResponse, "content": STREAMED}},
              summary="Legacy completions", openapi_extra=_body_doc(CompletionRequest))
    async def completions(request: Request):
        name, plan = await prepare(request, CompletionRequest, protocol.completion_plan)
        rid, created = protocol.new_id("cmpl"), protocol.now()
        if not plan.stream:
            finished = await collect(request, plan)
            return JSONResponse(protocol.completion_response(lm, plan, finished, rid, created, name))
        head = {"id": rid, "object": "text_completion", "created": created, "model": name}
        offsets = {}

        def chunks(event: Event | None) -> list[dict]:
            if event is None:
                return []
            p = event.sample // plan.n
            choice = {"index": event.sample, "text": "", "logprobs": None, "finish_reason": None}
            if isinstance(event, Scored):
                offsets[event.sample] = len(plan.prompt_texts[p])
                if not plan.echo:
                    return []
                choice["text"] = plan.prompt_texts[p]
                if plan.logprobs is not None:
                    choice["logprobs"] = protocol.completion_logprobs(lm, plan, p, event.prompt_logprobs, (), 0, True)
            elif isinstance(event, Delta):
                choice["text"] = event.text
                if plan.logprobs is not None:
                    start = offsets.get(event.sample, len(plan.prompt_texts[p]))
                    choice["logprobs"] = protocol.completion_logprobs(lm, plan, p, (), event.logprobs, start, False)
                    offsets[event.sample] = start + sum(len(e.token) for e in event.logprobs)
            else:
                choice["finish_reason"] = event.finish_reason
            return [{**head, "choices": [choice]}]

        return stream(plan, chunks, lambda tokens: {**head, "choices": [],
                                                    "usage": protocol.usage(plan.prompt_tokens, tokens)})

    @app.post("/v1/chat/completions", responses={**ERRORS, 200: {"model": ChatResponse, "content": STREAMED}},
              summary="Chat completions", openapi_extra=_body_doc(ChatRequest))
    async def chat_completions(request: Request):
        name, plan = await prepare(request, ChatRequest, protocol.chat_plan)  # a template renders for up to 5 s
        rid, created = protocol.new_id("chatcmpl"), protocol.now()
        if not plan.stream:
            finished = await collect(request, plan)
            return JSONResponse(protocol.chat_response(lm, plan, finished, rid, created, name))
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name}

        def chunk(index: int, delta: dict, logprobs=None, finish_reason=None) -> dict:
            return {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": finish_reason}]}

        def chunks(event: Event | None) -> list[dict]:
            if event is None:  # the role first, for every choice, as the reference API streams it
                return [chunk(i, {"role": "assistant", "content": ""}) for i in range(plan.n)]
            if isinstance(event, Delta):
                logprobs = protocol.chat_logprobs(lm, event.logprobs) if plan.logprobs is not None else None
                return [chunk(event.sample, {"content": event.text}, logprobs)]
            if isinstance(event, Finished):
                return [chunk(event.sample, {}, finish_reason=event.finish_reason)]
            return []

        return stream(plan, chunks, lambda tokens: {**head, "choices": [],
                                                    "usage": protocol.usage(plan.prompt_tokens, tokens)})

    created = protocol.now()
    cards = {name: {"id": name, "object": "model", "created": created, "owned_by": "fewshot",
                    "root": adapters[name].adapter if name in adapters else str(lm.source),
                    "parent": options.model_name if name in adapters else None, "max_model_len": context}
             for name in served}

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS, summary="The served models: base, then adapters")
    async def models(request: Request):
        return {"object": "list", "data": list(cards.values())}

    @app.get("/v1/models/{model}", response_model=ModelCard, responses=ERRORS, summary="One model")
    async def model(model: str, request: Request):
        return cards[check(request, model)]

    @app.get("/health", response_model=Health, summary="Liveness, and the engine's load")
    async def health():
        stats = engine.stats()
        return {"status": "ok", "running": stats["running"], "waiting": stats["waiting"]}

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus():
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    @app.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS, openapi_extra=_body_doc(TokenizeRequest),
              summary="Token ids of a prompt, or of chat messages after the template (vLLM's)")
    async def tokenize(request: Request):
        return JSONResponse(await in_worker(request, TokenizeRequest, lambda body, _: protocol.tokenize_response(body, lm)))

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS,
              openapi_extra=_body_doc(DetokenizeRequest), summary="The text of token ids (vLLM's)")
    async def detokenize(request: Request):
        return JSONResponse(await in_worker(request, DetokenizeRequest,
                                            lambda body, _: protocol.detokenize_response(body, lm)))

    return app


async def _cancel_on_disconnect(request: Request, job, engine: Engine) -> None:
    # The body is already read, so the next ASGI message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            engine.wake()
            return


def _failure(event: Failed) -> APIError:
    status = {"timeout": 504, "server_shutting_down": 503}.get(event.code, 500)
    return APIError(status, event.message, None, event.code, kind="server_error")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI says 422; OpenAI (and its clients) say 400 with the offending param.
        bad = protocol.validation_error(list(error.errors()), prefix=("body", "path", "query"))
        return JSONResponse(bad.body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid_request")
        return JSONResponse(error_body(str(error.detail), "invalid_request_error", None, code),
                            status_code=error.status_code, headers=getattr(error, "headers", None))

    # A bug (any other exception) becomes a generic 500 in guard.py, which logs it once.

def _body_doc(schema) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema.__name__}"}}}}}


def _install_openapi(app: FastAPI) -> None:
    """FastAPI documents 422 for every body; ours are 400s, already listed. The request bodies'
    schemas (read by hand, see _body_doc) join the components FastAPI generates."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            requests = (CompletionRequest, ChatRequest, TokenizeRequest, DetokenizeRequest)
            _, bodies = models_json_schema([(body, "validation") for body in requests],
                                           ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(bodies["$defs"])
            for path in schema["paths"].values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
