"""The wire format: OpenAI's legacy completions and chat completions, as pydantic models.

These models are what /openapi.json documents and what validates every request body. They
are strict (no "1" for 1, no true for 1), as the reference API is: a client that sends the
wrong type hears about it instead of getting a silently different request. Unknown fields
are ignored, so newer clients keep working. Ranges here are the API's own; the sampling
code checks them again (fewshot/inference/sampling.py) for callers that skip HTTP.

Responses are built as plain dicts (app.py) for speed; the models below document them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fewshot.inference.sampling import MAX_N
from fewshot.inference.lookup import MAX_DRAFT

MAX_LOGPROBS = 5  # the legacy completions API
MAX_TOP_LOGPROBS = 20  # the chat API
MAX_BEST_OF = 20

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
INTEGER_FIELDS = {"tokens", "max_tokens", "n", "seed", "top_k", "logprobs", "best_of", "max_completion_tokens", "top_logprobs",
                  "prompt_lookup"}


def _integral(value: object) -> object:
    """1.0 -> 1, also inside lists; 1.5 and everything else unchanged (and then refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: object) -> object:
        # JSON Schema's "integer" includes 1.0 and some clients send it, so accept it; strict
        # mode alone would refuse it.
        if isinstance(data, dict):
            return {k: _integral(v) if k in INTEGER_FIELDS or k == "prompt" else v for k, v in data.items()}
        return data


class StreamOptions(_Request):
    include_usage: bool | None = None


class JsonSchemaFormat(_Request):
    name: str | None = Field(None, description="The schema's name (OpenAI requires one; it changes nothing here).")
    schema_: dict | bool = Field(alias="schema", description="The JSON schema the answer must validate against.")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Request):
    """OpenAI's: "text" (free), "json_object" (any JSON object), "json_schema" (this schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Request):
    """vLLM's `structured_outputs` (since v0.12): exactly one of these."""

    choice: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    regex: str | None = None
    json_: dict | bool | str | None = Field(None, alias="json", description="A JSON schema (an object, or its JSON text).")
    grammar: str | None = Field(None, description="A context-free grammar, in Lark or in llama.cpp's GBNF.")
    json_object: bool | None = None


class _Sampling(_Request):
    model: str | None = Field(None, description="The served model's name (GET /v1/models); omitted means that one.")
    max_tokens: int | None = Field(16, ge=0, description="Tokens to generate; 0 only scores the prompt (with echo and logprobs).")
    temperature: float | None = Field(1.0, ge=0, le=2, description="0 is greedy.")
    top_p: float | None = Field(1.0, ge=0, le=1)
    n: int | None = Field(1, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="Up to 4 sequences; the text ends before the first one. Empty strings are ignored.")
    presence_penalty: float | None = Field(0.0, ge=-2, le=2)
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2)
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]+$")], float] | None = Field(
        None, description="Token id -> bias, clamped to [-100, 100] and added to its logit. An id outside the "
                          "model's vocabulary is a 400 (param logit_bias).")
    # Any integer, reduced modulo 2**64 (a range check on huge numbers would depend on
    # whether a client's JSON parser reads them as floats).
    seed: int | None = Field(None, description="Same seed and request, same text.")
    user: str | None = None
    top_k: int | None = Field(None, ge=0, description="Extension: keep only the k most likely tokens (0 = off).")
    prompt_lookup: int | None = Field(None, ge=0, le=MAX_DRAFT, description=(
        "Extension: prompt-lookup decoding, up to this many draft tokens per step copied from earlier in the "
        "sequence and checked in one pass; the same text, sooner (0 = off). A 400 for a model with a recurrent mixer."))
    response_format: ResponseFormat | None = Field(None, description="OpenAI's structured outputs: json_object or json_schema.")
    structured_outputs: StructuredOutputs | None = Field(None, description="vLLM's: choice, regex, json or grammar.")
    guided_choice: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = Field(
        None, description="vLLM's older name of structured_outputs.choice.")
    guided_regex: str | None = Field(None, description="vLLM's older name of structured_outputs.regex.")
    guided_json: dict | bool | str | None = Field(None, description="vLLM's older name of structured_outputs.json.")
    guided_grammar: str | None = Field(None, description="vLLM's older name of structured_outputs.grammar.")


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)] | None = Field(
        "", description="A string, strings, token ids, or lists of token ids; one completion set per prompt.")
    echo: bool | None = Field(False, description="Return the prompt before the completion (and its logprobs).")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="Logprob of each token plus this many most likely alternatives.")
    best_of: int | None = Field(None, ge=1, le=MAX_BEST_OF,
                                description="Sample this many per prompt and return the n with the highest mean "
                                            "token logprob; must be >= n; cannot stream.")
    suffix: Annotated[str, Field(max_length=0)] | None = Field(None, description="Insert mode is not supported: null or \"\".")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]  # developer: the newer name of system
    content: str | Annotated[list[TextPart], Field(min_length=1)] = Field(
        description="A string, or a list of text parts, joined with newlines as vLLM joins them.")
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens; wins when both are given.")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class TokenizeRequest(_Request):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the model's template first
    (exactly one of the two)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    return_token_strs: bool | None = Field(False, description="Also return each token's text.")


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


# ---------------------------------------------------------------------------- responses (documentation)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str  # the run directory (an adapter's own, for an adapter), as vLLM reports it
    parent: str | None = None  # for an adapter: the base model it runs on
    max_model_len: int  # the context, in tokens: prompt + completion


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    running: int
    waiting: int
