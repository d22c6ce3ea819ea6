"""Bad input gets a stable code, a human message, the right status and writes nothing."""

from __future__ import annotations

import httpx
import pytest

from metis_rag.config import Settings
from tests.files import pdf_bytes, txt_bytes
from tests.uploads import ingest

pytestmark = [pytest.mark.slow, pytest.mark.databases]


async def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in r.text
    return body


async def nothing_stored(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/documents")).json()["total"] == 0
    assert (await client.get("/api/tasks")).json()["total"] == 0  # no task was queued either


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("virus.exe", b"MZ\x90\x00", 415, "unsupported_media_type"),
        ("empty.txt", b"", 422, "empty_document"),
        ("blank.md", b"   \n\n  ", 422, "empty_document"),
        ("broken.pdf", b"%PDF-1.4 garbage garbage", 422, "corrupt_document"),
        ("locked.pdf", None, 422, "encrypted_document"),
        ("fake.docx", b"not a zip at all", 415, "content_mismatch"),  # text named .docx
        ("fake2.docx", bytes(range(256)) * 4, 422, "corrupt_document"),
    ],
)
async def test_bad_files(
    client: httpx.AsyncClient, name: str, data: bytes | None, status: int, code: str
) -> None:
    if data is None:
        data = pdf_bytes(encrypt="secret")
    r = await client.post("/api/documents", files={"files": (name, data)})
    body = await assert_error(r, status, code)
    assert name.split(".")[0] in str(body["message"]) or code == "unsupported_media_type"
    await nothing_stored(client)


async def test_one_bad_file_rejects_the_whole_upload(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/documents",
        files=[("files", ("good.txt", txt_bytes())), ("files", ("bad.pdf", b"%PDF-1.4 junk"))],
    )
    await assert_error(r, 422, "corrupt_document")
    await nothing_stored(client)


async def test_too_large_is_413_before_storing(make_settings) -> None:  # type: ignore[no-untyped-def]
    from metis_rag.app import create_app
    from tests.lifespan import lifespan

    settings: Settings = make_settings(max_upload_mb=0.01)
    app = create_app(settings)
    async with lifespan(app) as m:
        transport = httpx.ASGITransport(app=m.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
            big = b"word " * 10_000
            r = await client.post("/api/documents", files={"files": ("big.txt", big)})
            await assert_error(r, 413, "payload_too_large")

            async def chunked():  # no Content-Length: the limit is enforced while reading
                yield b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b.txt\"\r\n\r\n"
                for _ in range(100):
                    yield b"word " * 1000
                yield b"\r\n--x--\r\n"

            r = await client.post(
                "/api/documents", content=chunked(),
                headers={"content-type": "multipart/form-data; boundary=x"},
            )
            await assert_error(r, 413, "payload_too_large")
            await nothing_stored(client)


async def test_unknown_things_are_404(client: httpx.AsyncClient) -> None:
    await assert_error(await client.get("/api/documents/999"), 404, "document_not_found")
    await assert_error(await client.delete("/api/documents/999"), 404, "document_not_found")
    await assert_error(await client.get("/api/conversations/nope"), 404, "conversation_not_found")
    r = await client.post("/api/chat/query", json={"message": "hi", "collection": "missing"})
    await assert_error(r, 404, "collection_not_found")
    r = await client.get("/api/documents", params={"collection": "missing"})
    await assert_error(r, 404, "collection_not_found")
    await assert_error(await client.get("/api/nothing-here"), 404, "not_found")


async def test_invalid_json_and_fields_are_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/chat/query", content=b"{not json",
                          headers={"content-type": "application/json"})
    await assert_error(r, 422, "invalid_input")
    r = await client.post("/api/chat/query", json={"message": ""})
    body = await assert_error(r, 422, "invalid_input")
    assert "message" in str(body["message"])
    r = await client.post("/api/chat/query", json={"message": "x", "top_k": 0})
    await assert_error(r, 422, "invalid_input")
    r = await client.post("/api/chat/query", json={"message": "x", "unknown": 1})
    await assert_error(r, 422, "invalid_input")
    r = await client.post("/api/documents", data={"collection": "x"})
    await assert_error(r, 422, "multipart_required")
    r = await client.post("/api/documents", files={"files": ("a.txt", b"hello there")},
                          data={"collection": "../etc"})
    await assert_error(r, 422, "invalid_collection")
    await nothing_stored(client)


async def test_nasty_filename_is_sanitized(client: httpx.AsyncClient) -> None:
    body = await ingest(client, [("../../etc/pass\x00wd.txt", txt_bytes())])
    name = body["results"][0]["filename"]
    assert "/" not in name and ".." not in name and "\x00" not in name and name.endswith(".txt")
