"""Nothing is read before it is checked: a body over its path's limit is refused by its Content-Length before a byte
of it is read, or, chunked, no further than its limit; at once, in the path's own error shape, audited on the
generation endpoints. Over a real socket, the gateway served as in production (tests/conftest.py: serving_asgi)."""

import json
import tempfile

import pytest

from llm.models import Generation
from tests.conftest import GENERATE_URL
from tests.raw_http import RawConnection, chunked, head

BODY = {"role": "copywriter", "task": "sns", "payload": {"product": "Green tea", "tone": "calm"}}
CHAT = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "Hello"}]}
LYING = "99999999999"


@pytest.fixture
def spooled(monkeypatch):
    """What reached a spooled temporary file (Django's request body buffer), in any thread of this process: the
    bytes written, and how many files rolled over to disk."""
    seen = {"bytes": 0, "on_disk": 0}
    write, rollover = tempfile.SpooledTemporaryFile.write, tempfile.SpooledTemporaryFile.rollover

    def counted_write(self, data):
        seen["bytes"] += len(data)
        return write(self, data)

    def counted_rollover(self):
        if not self._rolled:
            seen["on_disk"] += 1
        return rollover(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "write", counted_write)
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", counted_rollover)
    return seen


def padded(body: dict, size: int) -> bytes:
    """`body` as JSON of at least `size` bytes (the padding in a payload field)."""
    if "payload" in body:
        return json.dumps({**body, "payload": {**body["payload"], "text": "x" * size}}).encode()
    return json.dumps({**body, "messages": [{"role": "user", "content": "x" * size}]}).encode()


def assert_native_error(response, status: int, type_: str) -> dict:
    assert response.status == status, response.body
    error = response.json()["error"]
    assert error["type"] == type_ and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def test_a_lying_content_length_is_answered_at_once_and_audited(gateway, spooled):
    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", GENERATE_URL, key=gateway.key, content_type="application/json",
                             content_length=LYING) + b'{"role": "')
        response = connection.response()

        assert response.seconds < 1.5, response.seconds
        error = assert_native_error(response, 413, "payload_too_large")
        assert "65536 bytes" in error["message"]
        # The rest of the body may still be coming: no next request can be read from this connection.
        assert response.headers["connection"] == "close"
        assert connection.closed_by_server()
    row = Generation.objects.get()
    assert (row.status, row.error_type, row.http_status, row.consumer.name) == ("failed", "payload_too_large", 413,
                                                                                 "test-team")
    assert str(row.id) == error["request_id"]
    assert row.request_bytes == 2**31 - 1  # the declared size, as far as the column holds it (PostgreSQL's integer)
    assert spooled["bytes"] == 0


def test_an_unauthenticated_huge_body_gets_its_401_without_being_read(gateway, spooled):
    size = 5 * 1024 * 1024  # over FILE_UPLOAD_MAX_MEMORY_SIZE: Django spooled it to disk, whole, before the 401
    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", GENERATE_URL, content_type="application/json", content_length=str(size)))
        sender = connection.send_in_background(b"x" * size)
        response = connection.response()
        sender.join(10)

    assert_native_error(response, 401, "not_authenticated")
    assert spooled == {"bytes": 0, "on_disk": 0}
    # The client wrote its whole body before reading: the gateway drained it instead of resetting the connection.
    assert sender.errors == []
    row = Generation.objects.get()
    assert (row.error_type, row.http_status, row.consumer) == ("not_authenticated", 401, None)


def test_a_chunked_body_is_read_no_further_than_its_limit(gateway, spooled):
    with RawConnection(gateway.url) as connection:  # within the limit, it is read whole
        connection.send(head("POST", GENERATE_URL, key=gateway.key, content_type="application/json",
                             transfer_encoding="chunked") + chunked(padded(BODY, 60 * 1024), 1000))
        response = connection.response()
    assert response.status == 200, response.body
    assert response.headers.get("connection") != "close"
    Generation.objects.all().delete()
    spooled["bytes"] = 0

    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", GENERATE_URL, key=gateway.key, content_type="application/json",
                             transfer_encoding="chunked"))
        # 160 KiB of a body that never ends: the answer must not wait for the rest.
        connection.send(chunked(padded(BODY, 160 * 1024), last=False))
        response = connection.response()

    assert response.seconds < 1.5, response.seconds
    error = assert_native_error(response, 413, "payload_too_large")
    assert response.headers["connection"] == "close"
    row = Generation.objects.get()
    assert (row.error_type, row.http_status, str(row.id)) == ("payload_too_large", 413, error["request_id"])
    # What had arrived when reading stopped: past the limit, and at most what was sent (on a busy machine the whole
    # 160 KiB can arrive in one read). What was kept of it stays within the limit, and the rest never came.
    assert 64 * 1024 < row.request_bytes <= len(chunked(padded(BODY, 160 * 1024), last=False))
    assert spooled["bytes"] <= 64 * 1024  # what was kept of it, before the limit was crossed


def test_a_chunked_native_body_over_django_s_upload_limit_is_413_with_its_row_not_a_bad_host_400(gateway):
    # As reported: 3 MB sent whole was answered "400 ... bad Host header?", by DATA_UPLOAD_MAX_MEMORY_SIZE, unaudited.
    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", GENERATE_URL, key=gateway.key, content_type="application/json",
                             transfer_encoding="chunked"))
        sender = connection.send_in_background(chunked(padded(BODY, 3_000_000)))
        response = connection.response()
        sender.join(10)

    assert_native_error(response, 413, "payload_too_large")
    assert Generation.objects.get().error_type == "payload_too_large"


def openai_error(response, status: int) -> dict:
    assert response.status == status, response.body
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def ollama_error(response, status: int) -> str:
    assert response.status == status, response.body
    assert set(response.json()) == {"error"} and response.json()["error"]
    return response.json()["error"]


@pytest.mark.parametrize("path, dialect", [("/v1/chat/completions", "openai"), ("/api/chat", "ollama"),
                                           ("/api/generate", "ollama")])
@pytest.mark.parametrize("sent_as", ["declared", "chunked"])
def test_chat_bodies_over_chat_max_body_bytes_are_413_in_their_dialect_and_audited(gateway, settings, spooled,
                                                                                    path, dialect, sent_as):
    # The chat endpoints' hard limit is the one for bodies with images; the text limit is checked once parsed.
    settings.CHAT_MAX_BODY_BYTES = settings.CHAT_MAX_IMAGE_BODY_BYTES = 4096
    body = padded(CHAT if path != "/api/generate" else {"model": "qwen2.5:7b", "prompt": "Hi"}, 8000)
    with RawConnection(gateway.url) as connection:
        if sent_as == "declared":
            connection.send(head("POST", path, key=gateway.key, content_type="application/json",
                                 content_length=str(len(body))))
        else:
            connection.send(head("POST", path, key=gateway.key, content_type="application/json",
                                 transfer_encoding="chunked") + chunked(body, 1024))
        response = connection.response()

    if dialect == "openai":
        assert openai_error(response, 413)["code"] == "payload_too_large"
    else:
        assert "4096 bytes" in ollama_error(response, 413)
    row = Generation.objects.get()
    assert (row.dialect, row.endpoint, row.error_type, row.http_status) == (dialect, path, "payload_too_large", 413)
    assert spooled["bytes"] <= 4096


def test_a_chat_body_over_django_s_upload_limit_but_within_chat_max_body_bytes_is_answered(gateway, settings):
    settings.CHAT_MAX_BODY_BYTES = 4 * 1024 * 1024
    body = {**CHAT, "messages": [{"role": "user", "content": "Summarise: " + "tea " * 750_000}]}  # 3 MB
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", json=body)

    assert response.status_code == 200, response.text
    assert Generation.objects.get().status == "succeeded"


@pytest.mark.parametrize("method, path, shape", [("GET", "/v1/models", "openai"), ("GET", "/api/tags", "ollama"),
                                                 ("POST", "/api/show", "ollama"), ("GET", "/healthz", "native"),
                                                 ("POST", "/api/v1/debug/ollama", "native")])
def test_other_paths_refuse_a_large_body_at_once_in_their_shape(gateway, spooled, method, path, shape):
    with RawConnection(gateway.url) as connection:
        connection.send(head(method, path, key=gateway.key, content_type="application/json",
                             content_length=LYING) + b"{}")
        response = connection.response()
        assert connection.closed_by_server()

    assert response.seconds < 1.5, response.seconds
    if shape == "openai":
        assert openai_error(response, 413)["code"] == "payload_too_large"
    elif shape == "ollama":
        assert "limit" in ollama_error(response, 413)
    else:
        assert_native_error(response, 413, "payload_too_large")
    assert spooled["bytes"] == 0
    assert not Generation.objects.exists()


def test_the_admin_refuses_a_body_over_data_upload_max_memory_size_before_reading_it(gateway, settings, spooled):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", "/admin/login/", content_type="application/x-www-form-urlencoded",
                             content_length="100001") + b"username=")
        response = connection.response()

    assert response.status == 413, response.body
    assert response.headers["content-type"].startswith("text/plain")
    assert b"100000 bytes" in response.body and response.headers["x-request-id"]
    assert spooled["bytes"] == 0
    with gateway.client() as client:  # a form of ordinary size is still read
        assert client.post("/admin/login/", data={"username": "x"}).status_code == 403  # no CSRF token


def test_a_refused_body_is_never_invited_with_100_continue(gateway):
    with RawConnection(gateway.url) as connection:
        connection.send(head("POST", GENERATE_URL, key=gateway.key, content_type="application/json",
                             content_length=str(10 * 1024 * 1024), expect="100-continue"))
        response = connection.response()

    assert response.status == 413  # not "100 Continue", which would ask the client to send the 10 MB


@pytest.mark.django_db
def test_where_django_reads_the_body_itself_its_own_limit_is_a_413_not_a_bad_host_400(client, settings):
    # manage.py runserver (WSGI) and the test client read bodies Django's way: DATA_UPLOAD_MAX_MEMORY_SIZE, then
    # the 400 handler, which said "bad Host header?".
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.post("/admin/login/", data="username=" + "x" * 2000,
                           content_type="application/x-www-form-urlencoded")

    assert response.status_code == 413
