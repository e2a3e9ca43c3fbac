"""`ServeOptions`: every setting of the server, declared once.

`fewshot serve` (and `python -m fewshot.serve`, the same command) makes one option per
field; `run_server` and `create_app` take the dataclass. The checks run when it is built,
so a bad value is refused before a model is loaded.

The API key can come from `--api-key`, `--api-key-file` or the FEWSHOT_API_KEY
environment variable; the last two keep it out of `ps`. An empty key is refused, never
read as "no auth".
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fewshot.config import DTYPE_HELP, check_dtype, setting
from fewshot.errors import FewshotError

API_KEY_ENV = "FEWSHOT_API_KEY"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


@dataclass(frozen=True)
class ServeOptions:
    model_name: str | None = setting(None, "The name clients use in `model` (default: the run directory's name).")
    adapter: tuple[str, ...] = setting((), "NAME=DIR: also serve the LoRA/(IA)3 run DIR, on the same base weights, "
                                           "as model NAME. Repeatable.")
    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8000, "Port to listen on (0: any free one).")
    api_key: str | None = setting(None, f"Require `Authorization: Bearer KEY` on /v1/*. Visible in `ps`: prefer "
                                        f"--api-key-file or ${API_KEY_ENV}.")
    api_key_file: Path | None = setting(None, "Read the API key from the first line of this file.")
    max_batch: int = setting(32, "Sequences decoded together.")
    max_queue: int = setting(256, "Waiting requests beyond which the server answers 429.")
    step_tokens: int = setting(512, "Token budget per engine step (prefill chunks + decodes).")
    prefix_cache_mb: float = setting(256.0, "Memory for the keys and values of prompt prefixes that requests share "
                                            "(few-shot demonstrations), in MB; reused instead of recomputed, least "
                                            "recently used first out. 0 turns prefix caching off.")
    request_timeout: float = setting(600.0, "Seconds before a request is abandoned.")
    drain_seconds: float = setting(30.0, "On SIGTERM, seconds running requests get to finish; then they end "
                                         "with a server_shutting_down error.")
    max_body_mb: float = setting(4.0, "Largest request body, in MB (10**6 bytes); bigger ones get 413.")
    device: str = setting("cpu", "Device to run the model on.")
    dtype: str = setting("fp32", DTYPE_HELP)
    compile: bool = setting(False, "Decode the base model through its compiled step (on the CPU built ahead of time, "
                                   "once per model shape, before the server listens; then cached).")
    log_level: str = setting("info", "uvicorn's and the server's log level.")
    retry_after: int = 1  # seconds, sent with 429

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", tuple(self.adapter))
        names = [name for name, _ in self._adapter_pairs()]
        if len(set(names)) < len(names):
            raise FewshotError(f"serve: two --adapter options share a name: {', '.join(names)}")
        for name in ("max_batch", "max_queue", "step_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FewshotError(f"serve: --{_flag(name)} must be an integer >= 1, got {value!r}")
        for name, ok, rule in (("request_timeout", lambda v: v > 0, "> 0"),
                               ("drain_seconds", lambda v: v >= 0, ">= 0"),
                               ("max_body_mb", lambda v: v > 0, "> 0"),
                               ("prefix_cache_mb", lambda v: v >= 0, ">= 0")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise FewshotError(f"serve: --{_flag(name)} must be a finite number {rule}, got {value!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise FewshotError(f"serve: --port must be in [0, 65535], got {self.port!r}")
        check_dtype(self.dtype, "serve")
        if self.log_level not in LOG_LEVELS:
            raise FewshotError(f"serve: --log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.api_key is not None and self.api_key_file is not None:
            raise FewshotError("serve: give --api-key or --api-key-file, not both")
        if self.api_key is not None and not self.api_key.strip():
            raise FewshotError("serve: --api-key is empty; give a real key (or leave the option out for no auth)")

    def _adapter_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for given in self.adapter:
            name, equals, directory = str(given).partition("=")
            if not equals or not name.strip() or not directory.strip():
                raise FewshotError(f"serve: --adapter takes NAME=DIR (the model name clients send, and an adapter "
                                   f"run), got {given!r}")
            pairs.append((name.strip(), directory.strip()))
        return pairs

    @property
    def adapters(self) -> dict[str, Path]:
        """Model name -> adapter run directory."""
        return {name: Path(directory) for name, directory in self._adapter_pairs()}

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 10**6)

    def resolved(self, run_dir: str | Path) -> ServeOptions:
        """These options with the key read (file or environment) and the model name filled in."""
        key = self.api_key
        if self.api_key_file is not None:
            key = _read_key(self.api_key_file)
        elif key is None and API_KEY_ENV in os.environ:
            key = os.environ[API_KEY_ENV].strip()
            if not key:
                raise FewshotError(f"serve: ${API_KEY_ENV} is set but empty; unset it for no auth")
        name = self.model_name or Path(run_dir).resolve().name
        if name in self.adapters:
            raise FewshotError(f"serve: --adapter {name}=... has the base model's name; give the adapter another one")
        return dataclasses.replace(self, api_key=key.strip() if key else None, api_key_file=None, model_name=name)


def _read_key(path: Path) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FewshotError(f"serve: cannot read --api-key-file {path}: {error}") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise FewshotError(f"serve: --api-key-file {path} is empty; its first line must be the key")
    return key


def _flag(name: str) -> str:
    return name.replace("_", "-")
