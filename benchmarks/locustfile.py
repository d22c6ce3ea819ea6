"""Locust users of a Metis server: a realistic mix, driven by bench_mixed.py (or by hand).

    locust -f benchmarks/locustfile.py --headless -u 50 -r 10 -t 60s -H http://127.0.0.1:8000

Each user mostly asks questions (popular ones far more often than others, in several
wordings: repeats and paraphrases), sometimes follows up in its conversation, uploads a small
document and polls it until it is ready, and lists documents. A request fails on a non-2xx
status or, for a question, on an answer without citations or with warnings (a degraded
answer counts as an error). With METIS_BENCH_SAMPLES set, every request is appended to that
CSV file: start time, name, milliseconds, ok, cache level, error.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

COLLECTION = os.environ.get("METIS_BENCH_COLLECTION", "bench")
TOPICS = harness.questions(int(os.environ.get("METIS_BENCH_TOPICS", "60")))
# Zipf-like popularity: topic i is asked about 1/(i+1) as often as the first.
WEIGHTS = [1 / (i + 1) for i in range(len(TOPICS))]
_samples: Any = None


@events.test_start.add_listener
def _open_samples(**_: Any) -> None:
    global _samples
    if path := os.environ.get("METIS_BENCH_SAMPLES"):
        _samples = csv.writer(open(path, "w", newline=""))
        _samples.writerow(["start", "name", "ms", "ok", "cache", "error"])


@events.request.add_listener
def _record(name: str, response_time: float, exception: Any, context: dict[str, Any],
            start_time: float | None = None, **_: Any) -> None:
    if _samples is not None:
        started = start_time if start_time is not None else time.time() - response_time / 1000
        _samples.writerow([f"{started:.3f}", name, f"{response_time:.2f}",
                           int(exception is None), context.get("cache", ""),
                           str(exception)[:300] if exception else ""])


def _multipart(filename: str, text: str, collection: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n\r\n{collection}',
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"'
        f"\r\nContent-Type: text/plain\r\n\r\n{text}",
    ]
    body = "\r\n".join(parts) + f"\r\n--{boundary}--\r\n"
    return body.encode(), f"multipart/form-data; boundary={boundary}"


class RagUser(FastHttpUser):
    wait_time = between(1, 3)
    conversation: str | None = None

    @task(12)
    def ask(self) -> None:
        variants = random.choices(TOPICS, WEIGHTS)[0]
        self._query({"message": random.choice(variants), "collection": COLLECTION}, "query")

    @task(2)
    def follow_up(self) -> None:
        if self.conversation is None:
            return self.ask()
        body = {"message": "Can you say more about that?", "collection": COLLECTION,
                "conversation_id": self.conversation}
        self._query(body, "follow-up")

    def _query(self, body: dict[str, Any], name: str) -> None:
        with self.client.post("/api/chat/query", json=body, name=name,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                return
            answer = r.json()
            # Locust copies the context given to post(); the one its event sends is this one.
            r.request_meta["context"]["cache"] = (answer.get("cache") or {}).get("level") or "miss"
            if answer.get("warnings") or not answer.get("citations"):
                r.failure(f"degraded answer: {answer.get('warnings')}")
                return
            self.conversation = answer["conversation_id"]

    @task(1)
    def upload_and_poll(self) -> None:
        text = " ".join(random.choice(TOPICS)[0] for _ in range(40)) + f" {uuid.uuid4().hex}."
        body, content_type = _multipart(f"note-{uuid.uuid4().hex[:8]}.txt", text, COLLECTION)
        with self.client.post("/api/documents", data=body, name="upload",
                              headers={"Content-Type": content_type}, catch_response=True) as r:
            if r.status_code not in (200, 201, 202):
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                return
            result = r.json()["results"][0]
        self._poll(result)

    def _poll(self, result: dict[str, Any]) -> None:
        """Follows a queued upload (task or document status) until it is done, for up to 30 s."""
        task_id = result.get("task_id")
        url = f"/api/tasks/{task_id}" if task_id else f"/api/documents/{result['document_id']}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self.client.get(url, name="poll", catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"HTTP {r.status_code}")
                    return
                status = r.json().get("status")
            if status in ("ready", "done", "succeeded", "completed", "created", "failed"):
                return
            time.sleep(0.2)

    @task(3)
    def list_documents(self) -> None:
        self.client.get(f"/api/documents?collection={COLLECTION}&limit=20", name="list")


if __name__ == "__main__":
    print(json.dumps([t[0] for t in TOPICS[:5]], indent=1))
