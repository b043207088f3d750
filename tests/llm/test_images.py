"""Images for vision models through both dialects: inline only, checked before Ollama, never fetched, never stored."""

import base64
import hashlib
import json
import socket

import ollama as ollama_client
import openai
import pytest

from llm.models import Generation
from tests.conftest import wait_for
from tests.pictures import png_bytes

pytestmark = pytest.mark.django_db(transaction=True)

PNG = png_bytes()
PNG_B64 = base64.b64encode(PNG).decode()
DATA_URL = f"data:image/png;base64,{PNG_B64}"


def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)


def ollama_sdk(gateway) -> ollama_client.Client:
    return ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=10,
                                trust_env=False)


@pytest.fixture
def vision(ollama):
    """A vision model on the fake Ollama."""
    ollama.models.append("llava:7b")
    return "llava:7b"


def only_row() -> Generation:
    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert Generation.objects.count() == 1
    return row


def image_parts(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def assert_no_image_bytes(row: Generation, encoded: str):
    """The image's base64 appears nowhere in what the row stores."""
    stored = json.dumps([row.request, row.prompt, row.output, row.raw_output])
    assert encoded[:24] not in stored


def test_an_openai_data_url_reaches_ollama_as_an_image_and_is_audited_by_hash(gateway, ollama, vision):
    ollama.reply = "A red pixel."

    completion = sdk(gateway).chat.completions.create(model=vision, messages=image_parts(DATA_URL))

    assert completion.choices[0].message.content == "A red pixel."
    sent = ollama.requests[-1].json["messages"]
    assert sent == [{"role": "user", "content": "What is in this picture?", "images": [PNG_B64]}]
    row = only_row()
    described = {"image": {"sha256": hashlib.sha256(PNG).hexdigest(), "size": len(PNG), "type": "image/png"}}
    assert row.prompt == [{"role": "user", "content": "What is in this picture?", "images": [described]}]
    # Replaced where it stood in the request as received.
    assert row.request["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": described}}
    assert_no_image_bytes(row, PNG_B64)


def test_ollama_images_pass_through_and_are_audited_by_hash(gateway, ollama, vision, tmp_path):
    picture = tmp_path / "pixel.png"
    picture.write_bytes(PNG)
    ollama.reply = "A pixel."

    reply = ollama_sdk(gateway).chat(model=vision, messages=[
        {"role": "user", "content": "Describe it.", "images": [str(picture)]}])

    assert reply.message.content == "A pixel."
    assert ollama.requests[-1].json["messages"][0]["images"] == [PNG_B64]
    row = only_row()
    assert row.prompt[0]["images"][0]["image"]["type"] == "image/png"
    assert row.request["messages"][0]["images"][0]["image"]["size"] == len(PNG)
    assert_no_image_bytes(row, PNG_B64)


def test_generate_carries_images_to_ollamas_generate(gateway, ollama, vision):
    reply = ollama_sdk(gateway).generate(model=vision, prompt="What is this?", images=[PNG])

    assert reply.done
    sent = ollama.requests[-1]
    assert (sent.path, sent.json["images"], sent.json["prompt"]) == ("/api/generate", [PNG_B64], "What is this?")
    row = only_row()
    assert row.prompt["images"][0]["image"]["type"] == "image/png"
    assert_no_image_bytes(row, PNG_B64)


def test_a_remote_image_url_is_refused_and_never_fetched(gateway, ollama):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/cat.png"
    try:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=image_parts(url))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()

    assert raised.value.body["param"] == "messages[0].content[1].image_url.url"
    assert "never fetches a URL" in raised.value.message and "data:image/png;base64" in raised.value.message
    assert ollama.requests == []
    row = only_row()
    assert (row.error_type, row.http_status, row.dialect) == ("invalid_request", 400, "openai")
    assert row.request["messages"][0]["content"][1]["image_url"]["url"] == url


@pytest.mark.parametrize("image, problem", [
    ("not base64 at all!", "is not valid base64"),
    (base64.b64encode(b"just some text, not a picture").decode(), "is not an image"),
    (base64.b64encode(b"%PDF-1.4 a document").decode(), "is not an image (its bytes are application/pdf)"),
])
def test_bad_image_data_is_a_400_before_ollama_sees_it(gateway, ollama, image, problem):
    with gateway.client() as http:
        response = http.post("/api/chat", json={"model": "qwen2.5:7b", "stream": False, "messages": [
            {"role": "user", "content": "Look.", "images": [image]}]})

    assert response.status_code == 400
    assert response.json()["error"].startswith(f"messages[0].images[0] {problem}")
    assert ollama.requests == []  # never reached the fake
    row = only_row()
    assert (row.error_type, row.dialect) == ("invalid_request", "ollama")
    kept = row.request["messages"][0]["images"][0]["image"]
    assert kept["type"] is None and kept["problem"] and len(kept["sha256"]) == 64
    assert image not in json.dumps(row.request)


@pytest.mark.parametrize("url, problem", [
    ("data:image/png;base64,!!!", "is not valid base64"),
    ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), "is not an image"),
    ("ftp://example.com/cat.png", "must be a data URL"),
    ("file:///etc/passwd", "must be a data URL"),
])
def test_bad_openai_image_urls_are_400_in_openais_shape(gateway, ollama, url, problem):
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=image_parts(url))

    assert problem in raised.value.message
    assert raised.value.body["param"] == "messages[0].content[1].image_url.url"
    assert ollama.requests == []
    assert only_row().error_type == "invalid_request"


def test_images_earn_the_larger_body_limit_and_text_does_not(gateway, ollama, vision, settings):
    settings.CHAT_MAX_BODY_BYTES = 4096
    settings.CHAT_MAX_IMAGE_BODY_BYTES = 64 * 1024
    large = base64.b64encode(png_bytes(filler=20_000)).decode()

    with gateway.client() as http:
        fits = http.post("/api/chat", json={"model": vision, "stream": False, "messages": [
            {"role": "user", "content": "Look.", "images": [large]}]})
        wordy = http.post("/api/chat", json={"model": "qwen2.5:7b", "stream": False, "messages": [
            {"role": "user", "content": "x" * 6000}]})
        huge = http.post("/v1/chat/completions", json={"model": "qwen2.5:7b", "messages": image_parts(
            "data:image/png;base64," + base64.b64encode(png_bytes(filler=70_000)).decode())})

    assert fits.status_code == 200, fits.text
    assert wordy.status_code == 413 and "besides its images" in wordy.json()["error"]
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    rows = {row.http_status for row in Generation.objects.all()}
    assert rows == {200, 413} and Generation.objects.count() == 3


def test_an_image_larger_than_djangos_own_upload_limit_is_read(gateway, ollama, vision):
    """Django refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB by default) unless told otherwise."""
    large = png_bytes(filler=3 * 1024 * 1024)

    reply = ollama_sdk(gateway).chat(model=vision, messages=[{"role": "user", "content": "Big?", "images": [large]}])

    assert reply.message.content.endswith(f"[1 image: png {len(large)} bytes]")
    assert only_row().prompt[0]["images"][0]["image"]["size"] == len(large)


def test_the_mock_provider_sees_the_images(gateway):
    completion = sdk(gateway).chat.completions.create(model="qwen2.5:7b", messages=image_parts(DATA_URL))

    assert "1 image: image/png" in completion.choices[0].message.content


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_a_body_larger_than_the_chat_limit_is_read_with_its_images_cut_out(gateway, ollama, vision, settings,
                                                                          dialect):
    """Over CHAT_MAX_BODY_BYTES only images may make a body large: they are read apart from the JSON (see
    llm.large_bodies) and reach Ollama exactly as sent."""
    settings.CHAT_MAX_BODY_BYTES = 32 * 1024
    large = png_bytes(filler=300_000)
    encoded = base64.b64encode(large).decode()
    small = base64.b64encode(png_bytes()).decode()

    with gateway.client() as http:
        if dialect == "ollama":
            response = http.post("/api/chat", json={"model": vision, "stream": False, "messages": [
                {"role": "user", "content": "Two pictures", "images": [encoded, small]}]})
        else:
            response = http.post("/v1/chat/completions", json={"model": vision, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Two pictures"},
                                             {"type": "image_url", "image_url": {"url": f"data:image/png;base64,"
                                                                                        f"{encoded}"}},
                                             {"type": "image_url", "image_url": f"data:image/png;base64,{small}"}]}]})

    assert response.status_code == 200, response.text
    assert ollama.requests[-1].json["messages"][0]["images"] == [encoded, small]
    row = only_row()
    assert [i["image"]["sha256"] for i in row.prompt[0]["images"]] == [hashlib.sha256(large).hexdigest(),
                                                                     hashlib.sha256(png_bytes()).hexdigest()]
    assert_no_image_bytes(row, encoded)


@pytest.mark.parametrize("content, status", [
    ("A" * 200_000, 413),  # long base64-looking text where no image goes: text, over the chat limit
    ("A" * 4_000, 200),
])
def test_long_base64_outside_an_image_is_text(gateway, ollama, vision, settings, content, status):
    settings.CHAT_MAX_BODY_BYTES = 32 * 1024
    picture = base64.b64encode(png_bytes(filler=200_000)).decode()

    with gateway.client() as http:
        response = http.post("/api/chat", json={"model": vision, "stream": False, "messages": [
            {"role": "user", "content": content, "images": [picture]}]})

    assert response.status_code == status, response.text
    if status == 200:
        assert ollama.requests[-1].json["messages"][0]["content"] == content


@pytest.mark.parametrize("picture, problem", [
    ("QUFB" * 30_000 + "QQ==" + "QUFB" * 30_000, "is not valid base64"),  # padding in the middle
    ("QUFB" * 60_000 + "QQ", "is not valid base64"),
    (base64.b64encode(b"%PDF-1.4" + b"x" * 200_000).decode(), "is not an image (its bytes are application/pdf)"),
])
def test_large_bad_images_are_refused_before_ollama(gateway, ollama, vision, settings, picture, problem):
    settings.CHAT_MAX_BODY_BYTES = 32 * 1024

    with gateway.client() as http:
        response = http.post("/api/chat", json={"model": vision, "stream": False, "messages": [
            {"role": "user", "content": "Look.", "images": [picture]}]})

    assert response.status_code == 400 and response.json()["error"].startswith(f"messages[0].images[0] {problem}")
    assert ollama.requests == []
    assert picture[:40] not in json.dumps(only_row().request)


def test_a_large_image_is_sent_again_whole_when_ollama_asks_for_a_retry(gateway, ollama, vision, settings):
    settings.CHAT_MAX_BODY_BYTES = 32 * 1024
    encoded = base64.b64encode(png_bytes(filler=400_000)).decode()
    ollama.fault("status", status=503, message="server busy", times=1)

    with gateway.client() as http:
        response = http.post("/api/chat", json={"model": vision, "stream": False, "messages": [
            {"role": "user", "content": "Again?", "images": [encoded]}]})

    assert response.status_code == 200, response.text
    first, second = ollama.requests
    assert first.raw == second.raw and second.json["messages"][0]["images"] == [encoded]
    assert only_row().attempts == 2


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "x" * 150_000}],  # one long text
    [{"role": "user", "content": "hi"}] * 20_000,  # many small strings: the scan stops at the text limit
])
def test_a_large_body_that_is_text_is_refused_unparsed(gateway, ollama, vision, settings, messages):
    settings.CHAT_MAX_BODY_BYTES = 32 * 1024
    settings.CHAT_MAX_IMAGE_BODY_BYTES = 1024 * 1024

    with gateway.client() as http:
        response = http.post("/api/chat", json={"model": vision, "stream": False, "messages": messages})

    assert response.status_code == 413 and "besides its images" in response.json()["error"]
    assert ollama.requests == []
    assert only_row().error_type == "payload_too_large"
