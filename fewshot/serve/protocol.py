"""Between the wire and the engine: API requests -> engine `Request`s, engine events -> API JSON.

Everything a user can get wrong is checked here and raised as `APIError` with OpenAI's
error fields, so the HTTP layer only has to send it. Parsing the body and building a plan
can take a while (big bodies, tokenising, chat templates): the HTTP layer runs them on a
worker thread, and what is too big by count alone is refused before it is validated or
tokenised. Choices to know about:
- best_of: each prompt is sampled best_of times and the n samples with the highest *mean*
  token logprob are returned. The mean, not the sum: a sum favours short samples, since
  every token adds a negative number.
- An empty prompt starts from the end-of-text token, as generate() does.
- max_tokens 0 returns no new text (with echo and logprobs: the prompt's scores, as
  lm-eval asks); empty stop strings are ignored.
- A prompt plus max_tokens must fit the context; no silent truncation (the library's
  generate() slides a window instead, but an API client asked for exactly this prompt).
- logprobs (legacy API): top_logprobs holds the `logprobs` most likely tokens plus the
  chosen one, so up to logprobs + 1 entries, as the reference API documents. With echo,
  the first prompt token has no logprob: null, as lm-eval expects.
- text_offset counts characters from the start of the prompt, echoed or not.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from dataclasses import dataclass

import orjson
from pydantic import BaseModel, ValidationError

from fewshot.errors import FewshotError
from fewshot.inference.guide import Guide, Matcher
from fewshot.inference.sampling import SamplingOptions, TokenLogprob, prompt_token_ids
from fewshot.serve.engine import Finished, Request
from fewshot.serve.schemas import ChatMessage, ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

MAX_SEQUENCES = 2048  # prompts x best_of in one request; more should be several requests
MAX_MESSAGES = 2048  # chat messages in one request; checked before the template renders them
STOP_LIMIT = 4


class APIError(Exception):
    """An error response in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


def _from_fewshot(error: FewshotError, default_param: str | None) -> APIError:
    """FewshotError messages name the option ("sampling: top_p must ..."): that is the param."""
    found = re.match(r"sampling: (?:logit_bias|(\w+))", str(error))
    param = ("logit_bias" if found.group(1) is None else found.group(1)) if found else default_param
    return bad_request(str(error), param)


# ---------------------------------------------------------------------------- the body


def parse_body(raw: bytes, content_type: str | None, schema: type[BaseModel], context: int) -> BaseModel:
    """The request body as `schema`, or a 400. Slow for a big body: run it off the event loop."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise bad_request(f"Content-Type must be application/json, got {content_type!r}", None)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise bad_request(f"The request body is not UTF-8: {error}", None) from None
    try:
        data = _loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        raise bad_request(f"The request body is not valid JSON: {str(error)[:200] or type(error).__name__}", None) from None
    if isinstance(data, dict):
        _check_counts(data, context)
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise validation_error(error.errors(include_url=False, include_input=False)) from None


def _loads(text: str) -> object:
    """orjson for speed: a parser holds the GIL for its whole call, and the json module takes
    50-110 ms on a 1.5 MB token-id body, during which /health waits. What orjson refuses goes
    to the json module, so the accepted language stays Python's (NaN, Infinity, integers past
    64 bits): a NaN temperature is then refused by the schema, which names the field."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _check_counts(data: dict, context: int) -> None:
    """Refuse what is too big by count alone before validating it: pydantic holds the GIL
    for its whole run (~0.3 s for a million token ids), which would stall the event loop."""
    prompt, messages = data.get("prompt"), data.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise _too_many_messages(len(messages))
    if not isinstance(prompt, list) or not prompt:
        return
    flat = isinstance(prompt[0], (int, float)) and not isinstance(prompt[0], bool)
    if not flat and len(prompt) > MAX_SEQUENCES:
        raise bad_request(f"{len(prompt)} prompts is more than {MAX_SEQUENCES}; split the request", "prompt")
    lengths = [len(prompt)] if flat else [len(p) for p in prompt if isinstance(p, list)]
    if lengths and max(lengths) > context:  # even with max_tokens 0 (scoring only), it cannot fit
        raise APIError(400, f"This model's maximum context length is {context} tokens, however your prompt "
                                f"has {max(lengths)} tokens. Please reduce your prompt.", "prompt", "context_length_exceeded")


def _too_many_messages(count: int) -> APIError:
    return bad_request(f"{count} messages is more than {MAX_MESSAGES}; shorten the conversation", "messages")


def validation_error(problems: list[dict], prefix: tuple = ()) -> APIError:
    """pydantic's (or FastAPI's) complaints as one 400 naming the first offending param."""
    first = problems[0] if problems else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in prefix]
    if first.get("type") == "json_invalid":
        return bad_request(f"The request body is not valid JSON: {first.get('msg', '')}", None)
    if not loc:
        return bad_request(f"The request body must be a JSON object: {first.get('msg', 'invalid')}", None)
    # The field the client sent; the rest of the location (union members, indices) goes in the message.
    return bad_request(f"Invalid value for '{'.'.join(loc)}': {first.get('msg', 'invalid')}", loc[0])


@dataclass(frozen=True)
class Plan:
    """An engine request plus what formatting the answer needs."""

    request: Request
    prompt_texts: tuple[str, ...]  # what echo returns
    n: int  # choices per prompt returned (best_of may sample more)
    echo: bool
    logprobs: int | None
    stream: bool
    include_usage: bool
    prompt_tokens: int

    def pick(self, finished: list[Finished]) -> list[tuple[int, Finished]]:
        """(choice index, sample) for every returned choice, best of each prompt's samples first."""
        per_prompt = self.request.options.n
        by_sample = sorted(finished, key=lambda f: f.sample)
        choices = []
        for p in range(len(self.request.prompts)):
            group = by_sample[p * per_prompt : (p + 1) * per_prompt]
            if per_prompt > self.n:
                group = sorted(group, key=lambda f: -f.logprob_sum / max(1, len(f.token_ids)))[: self.n]
            choices.extend((p * self.n + i, f) for i, f in enumerate(group))
        return choices


def completion_plan(body: CompletionRequest, lm) -> Plan:
    """Slow for a big prompt (it tokenises): the HTTP layer runs it off the event loop."""
    tokenizer, context = lm.tokenizer, lm.model.config.context
    prompts = _prompts(body.prompt)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    echo = bool(body.echo)
    n = body.n or 1
    best_of = n if body.best_of is None else body.best_of
    # Every check on counts comes before tokenising, which costs time per prompt.
    if best_of < n:
        raise bad_request(f"best_of ({best_of}) must be at least n ({n})", "best_of")
    if body.stream and best_of > n:
        raise bad_request("best_of > n cannot be streamed; set stream to false or best_of to n", "best_of")
    if len(prompts) * best_of > MAX_SEQUENCES:
        raise bad_request(f"{len(prompts)} prompts x {best_of} samples is more than {MAX_SEQUENCES}; split the request", "prompt")
    ids = _token_ids(lm, prompts, max_tokens, "prompt")
    texts = tuple(p if isinstance(p, str) else tokenizer.decode(p) for p in prompts)
    ids = [p or [tokenizer.eot_id] for p in ids]
    for p in ids:
        _check_fits(len(p), max_tokens, context, "prompt")
    options = _options(body, lm, n=best_of, max_tokens=max_tokens, stop=_stops(body.stop), logprobs=body.logprobs)
    request = Request(tuple(tuple(p) for p in ids), options, max_tokens,
                      prompt_logprobs=echo and body.logprobs is not None, rank=best_of > n, stream=bool(body.stream),
                      guide=_guide(body, lm))
    return Plan(request, texts, n, echo, body.logprobs, bool(body.stream), _include_usage(body),
                sum(len(p) for p in ids))


def chat_plan(body: ChatRequest, lm) -> Plan:
    """Slow (the template renders in a worker process, up to seconds): run it off the event loop.

    Any FewshotError, a failing chat template's included, is the request's fault: a 400."""
    if len(body.messages) > MAX_MESSAGES:
        raise _too_many_messages(len(body.messages))
    try:
        prompt = _render(lm, body.messages)
    except FewshotError as error:
        raise bad_request(str(error), "messages") from None
    context = lm.model.config.context
    max_tokens = body.max_completion_tokens or body.max_tokens
    ids = _token_ids(lm, [prompt.text], max_tokens or 1, "messages")[0] or [lm.tokenizer.eot_id]
    if max_tokens == 0:
        raise bad_request("max_tokens must be at least 1", "max_tokens")
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    if max_tokens is None:  # as the reference API: up to the end of the context
        max_tokens = max(1, context - len(ids))
    _check_fits(len(ids), max_tokens, context, "messages", param)
    # The template's own stops come first: without them the reply runs into the next turn.
    stops = tuple(dict.fromkeys((*prompt.stop, *_stops(body.stop))))[:STOP_LIMIT]
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    n = body.n or 1
    options = _options(body, lm, n=n, max_tokens=max_tokens, stop=stops, logprobs=logprobs)
    request = Request((tuple(ids),), options, max_tokens, stream=bool(body.stream), guide=_guide(body, lm))
    return Plan(request, (prompt.text,), n, False, logprobs, bool(body.stream), _include_usage(body), len(ids))


def _render(lm, messages: list[ChatMessage]):
    return lm.chat_prompt([{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages])


def tokenize_response(body: TokenizeRequest, lm) -> dict:
    """vLLM's /tokenize answer. Slow for a big text: run it off the event loop."""
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("Give exactly one of prompt and messages", "prompt" if body.prompt is None else "messages")
    if body.messages is not None:
        if len(body.messages) > MAX_MESSAGES:
            raise _too_many_messages(len(body.messages))
        try:
            text = _render(lm, body.messages).text
        except FewshotError as error:
            raise bad_request(str(error), "messages") from None
    else:
        text = body.prompt
    ids = list(lm.tokenizer.encode_batch([text])[0])  # encode_batch lets go of the GIL
    strs = [lm.tokenizer.decode([i]) for i in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": lm.model.config.context, "tokens": ids, "token_strs": strs}


def detokenize_response(body: DetokenizeRequest, lm) -> dict:
    try:
        ids = prompt_token_ids(lm.tokenizer, body.tokens, lm.model.config.vocab_size)
    except FewshotError as error:
        raise bad_request(str(error), "tokens") from None
    return {"prompt": lm.tokenizer.decode(ids)}


def _token_ids(lm, prompts: list, max_tokens: int, param: str) -> list[list[int]]:
    """Token ids of every prompt; texts that cannot fit the context are refused without tokenising.

    A token covers at most `_longest_token` bytes, so a text of B bytes has at least
    B / longest tokens. Tokenising a megabyte would take seconds, in one call that holds
    the GIL (`tokenizers`' encode), which would stall the event loop however it is run;
    encode_batch releases the GIL, so it is used even for one text.
    """
    context, vocab = lm.model.config.context, lm.model.config.vocab_size
    longest = _longest_token(lm.tokenizer)
    texts = [p for p in prompts if isinstance(p, str)]
    for text in texts:
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        at_least = -(-size // longest)
        if at_least + max_tokens > context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens, however you requested at least "
                f"{at_least + max_tokens} tokens (at least {at_least} in your prompt; {max_tokens} for the completion). "
                f"Please reduce your prompt or max_tokens.",
                param, "context_length_exceeded")
    try:
        encoded = iter(lm.tokenizer.encode_batch(texts) if texts else ())
        return [list(next(encoded)) if isinstance(p, str) else prompt_token_ids(lm.tokenizer, p, vocab) for p in prompts]
    except FewshotError as error:
        raise bad_request(str(error), param) from None


@functools.lru_cache(maxsize=8)
def _longest_token(tokenizer) -> int:
    """The most bytes one token stands for (special tokens included, which only loosens the bound)."""
    return max(1, max(len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size)))


def _prompts(prompt) -> list[str | list[int]]:
    if prompt is None or isinstance(prompt, str):
        return [prompt or ""]
    if not prompt:
        raise bad_request("prompt must not be an empty list", "prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def _stops(stop) -> tuple[str, ...]:
    stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > STOP_LIMIT:
        raise bad_request(f"stop takes at most {STOP_LIMIT} sequences, got {len(stops)}", "stop")
    return tuple(s for s in stops if s)  # "" would stop before the first token: read it as no stop


def _check_fits(prompt_tokens: int, max_tokens: int, context: int, param: str, tokens_param: str = "max_tokens") -> None:
    if prompt_tokens + max_tokens > context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens, however you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in your prompt; {max_tokens} for the completion). "
            f"Please reduce your prompt or {tokens_param}.",
            param, "context_length_exceeded")


def _include_usage(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _options(body, lm, n: int, max_tokens: int, stop: tuple[str, ...], logprobs: int | None) -> SamplingOptions:
    # An id this vocabulary lacks is refused (SamplingOptions.check_vocab), as everywhere:
    # a client sending GPT-2's 50256 to another tokenizer should hear about it.
    bias = {int(key): value for key, value in (body.logit_bias or {}).items()}
    top_p = 1.0 if body.top_p is None else body.top_p
    try:
        options = SamplingOptions(
            max_tokens=max(1, max_tokens),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=body.top_k or 0,
            top_p=top_p if top_p > 0 else 1e-9,  # the API allows 0: keep only the most likely token
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=bias, stop=stop, n=n, seed=None if body.seed is None else body.seed % 2**64, logprobs=logprobs,
            prompt_lookup=body.prompt_lookup or 0,
        )
        options.check_vocab(lm.model.config.vocab_size)
        if options.prompt_lookup and not lm.model.rewindable:
            raise bad_request(f"prompt_lookup needs a cache that can take back positions, and the "
                              f"{lm.model.config.attention} mixer keeps a recurrent state", "prompt_lookup")
        return options
    except FewshotError as error:
        raise _from_fewshot(error, None) from None


def _guide(body, lm) -> Matcher | None:
    """The one structured-output constraint of a request (OpenAI's, vLLM's, or vLLM's older
    names), built against the model's vocabulary; a 400 naming the parameter otherwise."""
    given = []
    if body.response_format is not None and body.response_format.type != "text":
        fmt = body.response_format
        if fmt.type == "json_object":
            given.append(("response_format", Guide("json_object")))
        elif fmt.json_schema is None:
            raise bad_request("response_format of type json_schema needs a json_schema object", "response_format")
        else:
            given.append(("response_format", Guide("json_schema", json.dumps(fmt.json_schema.schema_))))
    if body.structured_outputs is not None:
        so = body.structured_outputs
        named = [(key, value) for key, value in (("choice", so.choice), ("regex", so.regex), ("json", so.json_),
                                                 ("grammar", so.grammar), ("json_object", so.json_object or None))
                 if value is not None]
        if len(named) != 1:
            raise bad_request("structured_outputs takes exactly one of choice, regex, json, grammar and json_object, "
                              f"got {len(named)}", "structured_outputs")
        given.append(("structured_outputs", _guide_of(*named[0])))
    for key in ("choice", "regex", "json", "grammar"):
        value = getattr(body, f"guided_{key}")
        if value is not None:
            given.append((f"guided_{key}", _guide_of(key, value)))
    if not given:
        return None
    if len(given) > 1:
        raise bad_request(f"Give one structured-output constraint, got {', '.join(p for p, _ in given)}", given[1][0])
    param, guide = given[0]
    if body.prompt_lookup:
        raise bad_request("prompt_lookup cannot be combined with structured outputs (its drafts skip the grammar)",
                          "prompt_lookup")
    try:
        return Matcher.start(guide, lm.tokenizer, lm.model.config.vocab_size)
    except FewshotError as error:
        raise bad_request(f"Invalid {param}: {error}", param) from None


def _guide_of(kind: str, value) -> Guide:
    if kind == "choice":
        return Guide.choice(list(value))
    if kind == "json":
        return Guide("json_schema", value if isinstance(value, str) else json.dumps(value))
    if kind == "json_object":
        return Guide("json_object")
    return Guide(kind, value)


# ---------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _top(entry: TokenLogprob) -> dict[str, float]:
    top = dict(entry.top)
    top.setdefault(entry.token, entry.logprob)
    return top


def completion_logprobs(lm, plan: Plan, prompt_index: int, prompt_lps, lps, offset: int, first: bool) -> dict:
    """The legacy logprobs object for some tokens, text offsets starting at `offset`.

    `first`: these tokens begin with the prompt's first token, which has no logprob.
    """
    tokens, token_logprobs, top_logprobs = [], [], []
    if first:
        first_id = plan.request.prompts[prompt_index][0]
        tokens.append(lm.tokenizer.decode([first_id]))
        token_logprobs.append(None)
        top_logprobs.append(None)
    for entry in (*prompt_lps, *lps):
        tokens.append(entry.token)
        token_logprobs.append(entry.logprob)
        top_logprobs.append(_top(entry))
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def completion_response(lm, plan: Plan, finished: list[Finished], rid: str, created: int, model: str) -> dict:
    choices = []
    for index, f in plan.pick(finished):
        p = index // plan.n
        prompt_text = plan.prompt_texts[p]
        logprobs = None
        if plan.logprobs is not None:
            start = 0 if plan.echo else len(prompt_text)
            logprobs = completion_logprobs(lm, plan, p, f.prompt_logprobs if plan.echo else (), f.logprobs,
                                           start, first=plan.echo)
        text = (prompt_text if plan.echo else "") + f.text
        choices.append({"text": text, "index": index, "logprobs": logprobs, "finish_reason": f.finish_reason})
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": usage(plan.prompt_tokens, sum(len(f.token_ids) for f in finished))}


def chat_logprobs(lm, entries) -> dict:
    def item(token: str, token_id: int | None, logprob: float) -> dict:
        raw = lm.tokenizer.decode_bytes([token_id]) if token_id is not None else token.encode()
        return {"token": token, "logprob": logprob, "bytes": list(raw)}

    return {"content": [
        {**item(e.token, e.token_id, e.logprob), "top_logprobs": [item(t, None, v) for t, v in e.top]} for e in entries
    ]}


def chat_response(lm, plan: Plan, finished: list[Finished], rid: str, created: int, model: str) -> dict:
    choices = [{
        "index": index,
        "message": {"role": "assistant", "content": f.text},
        "logprobs": chat_logprobs(lm, f.logprobs) if plan.logprobs is not None else None,
        "finish_reason": f.finish_reason,
    } for index, f in plan.pick(finished)]
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": usage(plan.prompt_tokens, sum(len(f.token_ids) for f in finished))}

