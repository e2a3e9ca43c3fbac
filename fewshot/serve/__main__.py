"""`python -m fewshot.serve RUN --port 8000`: the same server as `fewshot serve`."""

from __future__ import annotations

import argparse
import sys

from fewshot.errors import FewshotError
from fewshot.serve.server import run_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fewshot.serve", description=run_server.__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--max-batch", type=int, default=32, help="sequences decoded together")
    parser.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    parser.add_argument("--model-name", default=None, help="the name clients ask for (default: the run's folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step-tokens", type=int, default=512, help="token budget of one engine step")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--drain-seconds", type=float, default=30.0, help="on SIGTERM, time to finish requests")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        run_server(args.run_dir, host=args.host, port=args.port, api_key=args.api_key, max_batch=args.max_batch,
                   max_queue=args.max_queue, model_name=args.model_name, device=args.device,
                   step_tokens=args.step_tokens, request_timeout=args.request_timeout,
                   drain_seconds=args.drain_seconds, log_level=args.log_level)
    except FewshotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
