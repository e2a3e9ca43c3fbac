"""An OpenAI-compatible server for fewshot models: /v1/completions, /v1/chat/completions.

    from fewshot.serve import run_server
    run_server("runs/mine", port=8000)          # or: python -m fewshot.serve runs/mine --port 8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="mine", prompt="ROMEO:", max_tokens=20)

Modules, one job each:
- engine.py    continuous batching over one model, on its own thread
- schemas.py   the wire format (pydantic), which /openapi.json documents
- protocol.py  API requests -> engine requests, engine events -> API responses
- app.py       FastAPI routes, errors in OpenAI's shape, streaming
- server.py    run_server: uvicorn, graceful shutdown
- bench.py     bench_serve: throughput and latency with 1..32 concurrent clients
"""

from fewshot.serve.app import ServeOptions, create_app
from fewshot.serve.engine import Engine, EngineConfig
from fewshot.serve.server import run_server

__all__ = ["Engine", "EngineConfig", "ServeOptions", "create_app", "run_server"]
