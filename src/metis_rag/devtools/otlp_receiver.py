"""A tiny real OTLP/HTTP trace receiver (protobuf, `POST /v1/traces`), for tests and benchmarks.

It decodes what an OpenTelemetry exporter sends and keeps the spans, so a test can check what
Metis exported over the wire without a collector. Needs the `otel` extra (opentelemetry-proto).

    with OtlpReceiver() as receiver:   # receiver.url -> METIS_OBSERVABILITY__OTLP_ENDPOINT
        ...; receiver.spans()

    python -m metis_rag.devtools.otlp_receiver --port 4318   # GET / answers {"spans": n}
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)
    service_name: str = ""
    status_code: int = 0  # 2 = error


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def decode(body: bytes) -> list[ReceivedSpan]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                out.append(ReceivedSpan(
                    name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(), kind=s.kind,
                    attributes={a.key: _value(a.value) for a in s.attributes},
                    service_name=str(resource.get("service.name", "")),
                    status_code=s.status.code))
    return out


class OtlpReceiver:
    def __init__(self, status: int = 200, port: int = 0) -> None:
        self.port = port
        self.status = status
        self.requests = 0
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def _receive(self, body: bytes) -> None:
        spans = decode(body)
        with self._lock:
            self.requests += 1
            self._spans.extend(spans)

    def __enter__(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                else:
                    receiver._receive(body)
                    self.send_response(receiver.status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                body = json.dumps({"spans": len(receiver.spans()),
                                   "requests": receiver.requests}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description="A tiny OTLP/HTTP trace receiver.")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    with OtlpReceiver(port=args.port) as receiver:
        assert receiver._thread is not None
        receiver._thread.join()


if __name__ == "__main__":
    main()
