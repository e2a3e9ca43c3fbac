"""`run_server`: load a run directory and serve it with uvicorn until SIGINT/SIGTERM.

On SIGTERM uvicorn stops accepting connections and lets open requests (streams too) run
for up to `drain_seconds`; then it cancels what is left, which cancels their engine jobs,
and the app's shutdown stops the engine thread. So a deploy that sends SIGTERM loses no
answer that could finish in time, and the process always exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from fewshot.errors import FewshotError
from fewshot.serve.app import ServeOptions, create_app


def run_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               max_batch: int = 32, max_queue: int = 256, model_name: str | None = None, device: str = "cpu",
               step_tokens: int = 512, request_timeout: float = 600.0, drain_seconds: float = 30.0,
               log_level: str = "info") -> None:
    """Serve the model in `run_dir` at http://host:port/v1 (OpenAI's completions API) until stopped."""
    import uvicorn

    import fewshot

    if not 0 <= port <= 65535:
        raise FewshotError(f"serve: port must be in [0, 65535], got {port}")
    lm = fewshot.load(run_dir, device=device)
    options = ServeOptions(
        model_name=model_name or Path(run_dir).resolve().name, api_key=api_key or None, max_batch=max_batch,
        max_queue=max_queue, step_tokens=step_tokens, request_timeout=request_timeout, drain_seconds=drain_seconds,
    )
    app = create_app(lm, options)
    logging.getLogger("fewshot.serve").setLevel(log_level.upper())
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=drain_seconds)
    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that was
        # there before; a no-op one makes that graceful shutdown exit with status 0.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.Server(config).run()
