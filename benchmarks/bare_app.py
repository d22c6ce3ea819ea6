"""The yardstick of bench_load.py: a bare FastAPI endpoint answering POST /api/chat/query with
a JSON document looked up in a dict (the same answers Metis gave), served like `metis serve`.

    python benchmarks/bare_app.py ANSWERS.json PORT
"""

from __future__ import annotations

import json
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI


def create(answers: dict[str, Any]) -> FastAPI:
    app = FastAPI()
    first = next(iter(answers.values()))

    @app.post("/api/chat/query")
    async def query(body: dict[str, Any]) -> dict[str, Any]:
        return answers.get(body.get("message", ""), first)  # type: ignore[no-any-return]

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        loaded = json.load(f)
    uvicorn.run(create(loaded), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                loop="auto", http="auto")
