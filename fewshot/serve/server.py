"""`run_server`: load a run directory and serve it with uvicorn until SIGINT/SIGTERM.

On SIGTERM the engine starts draining at once: new requests get 503 server_shutting_down,
running ones (streams too) have `drain_seconds` to finish. At that deadline the engine
fails every job left with a server_shutting_down event, so each handler ends its own
response: a stream with an error event and `data: [DONE]`, any other request with a 503.
uvicorn's own graceful timeout is set a little later, so it never has to cancel a task
(which would cut streams with no word, and log a traceback per connection).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from fewshot.serve.options import ServeOptions

MARGIN_SECONDS = 5.0  # after the drain deadline, for handlers to send their last bytes


def run_server(run_dir: str | Path, options: ServeOptions = ServeOptions()) -> None:
    """Serve the model in `run_dir` at http://host:port/v1 (OpenAI's completions API) until stopped."""
    import uvicorn

    import fewshot
    from fewshot.serve.app import create_app

    options = options.resolved(run_dir)  # every check, the key's too, before the (slow) load
    lm = fewshot.load(run_dir, device=options.device, dtype=options.dtype)
    lm.model.compile_decoding(options.compile, now=True)
    adapters = {name: lm.with_adapter(directory) for name, directory in options.adapters.items()}
    app = create_app(lm, options, adapters=adapters)
    logging.getLogger("fewshot.serve").setLevel(options.log_level.upper())
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level=options.log_level,
                            access_log=False, timeout_graceful_shutdown=options.drain_seconds + MARGIN_SECONDS)
    engine = app.state.engine

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            engine.drain(options.drain_seconds)  # only sets a flag and a deadline: fine in a signal handler
            super().handle_exit(sig, frame)

    if threading.current_thread() is threading.main_thread():
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that was
        # there before; a no-op one makes that graceful shutdown exit with status 0.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    Server(config).run()
