"""An OpenAI-compatible server for fewshot models: /v1/completions, /v1/chat/completions.

    from fewshot.serve import ServeOptions, run_server
    run_server("runs/mine", ServeOptions(port=8000))   # or: fewshot serve runs/mine --port 8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="mine", prompt="ROMEO:", max_tokens=20)

Adapters of the base are served beside it, on its weights, under their own `model` names
(`ServeOptions(adapter=("tuned=runs/ft",))`, or `fewshot serve runs/mine --adapter tuned=runs/ft`).

Modules, one job each:
- options.py   ServeOptions: every setting, its checks, where the API key comes from
- engine.py    continuous batching over one model, on its own thread
- prefix_cache.py  keys and values of shared prompt prefixes, reused across requests
- schemas.py   the wire format (pydantic), which /openapi.json documents
- protocol.py  API requests -> engine requests, engine events -> API responses
- guard.py     before any route: API key, body size, and a 500 for bugs
- metrics.py   /metrics: Prometheus counters, gauges and latency histograms
- app.py       FastAPI routes, errors in OpenAI's shape, streaming
- static/      the Playground page at / (HTML, JS, CSS; no CDN)
- server.py    run_server: uvicorn, graceful shutdown
"""

from __future__ import annotations

import importlib

from fewshot.serve.options import ServeOptions

# The rest loads on first use, so `fewshot --help` does not import FastAPI and torch.
_LAZY = {"create_app": "fewshot.serve.app", "Engine": "fewshot.serve.engine", "EngineConfig": "fewshot.serve.engine",
         "run_server": "fewshot.serve.server"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fewshot.serve' has no attribute {name!r}")


__all__ = ["Engine", "EngineConfig", "ServeOptions", "create_app", "run_server"]
