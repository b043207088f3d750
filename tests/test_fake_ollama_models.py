"""The fake Ollama's models: capabilities, tools, thinking, images, generate, embeddings and the /v1 layer.

Driven over real sockets with httpx for the exact wire, and with the real `openai` and `ollama` clients to prove the
fake speaks what they expect. Shapes follow Ollama v0.33.0-rc2 (tests/fake_ollama.py names the commit).
"""

import base64
import json
import math
import struct

import httpx
import ollama
import openai
import pytest

from tests.fake_ollama import BAD_IMAGE, NO_VISION, FakeOllama, ModelSpec

MODELS = ["qwen3:8b", "gpt-oss:20b", "llava:7b", "nomic-embed-text", "qwen2.5:7b", "phi:2.7b", "qwen2.5-coder:1.5b"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city", "unit", "days"], "properties": {
        "city": {"type": "string", "description": "the city"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1},
        "detail": {"type": "boolean"},
    }}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "object", "properties": {"name": {"type": "string"}, "offset": {"type": "number"}}},
        "formats": {"type": "array", "items": {"type": "string", "enum": ["iso", "unix"]}},
    }}}}
TOOLS = [WEATHER, CLOCK]
ASK = [{"role": "user", "content": "weather in Tokyo?"}]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 59
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 996


@pytest.fixture(scope="module")
def server():
    with FakeOllama(models=MODELS) as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(fake):
    with httpx.Client(base_url=fake.url, timeout=5) as c:
        yield c


def ndjson(response):
    return [json.loads(line) for line in response.iter_lines() if line]


def sse(response):
    events = [line[len("data: "):] for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def chat(client, **body):
    return client.post("/api/chat", json={"model": "qwen3:8b", "messages": ASK, "stream": False, **body})


# -- capabilities ------------------------------------------------------------------------------------------------

def test_show_and_tags_carry_each_models_capabilities(fake, client):
    expected = {"qwen3:8b": ["completion", "tools", "thinking"], "llava:7b": ["completion", "vision"],
                "nomic-embed-text": ["embedding"], "phi:2.7b": ["completion"],
                "qwen2.5-coder:1.5b": ["completion", "tools", "insert"], "qwen2.5:7b": ["completion", "tools"]}
    for name, capabilities in expected.items():
        shown = client.post("/api/show", json={"model": name}).json()
        assert shown["capabilities"] == capabilities
        assert {"modelfile", "parameters", "template", "details", "model_info", "modified_at"} <= shown.keys()
    info = client.post("/api/show", json={"model": "nomic-embed-text"}).json()["model_info"]
    assert info["general.architecture"] == "nomic-bert" and info["nomic-bert.embedding_length"] == 768
    assert info["nomic-bert.context_length"] == 2048
    tags = {m["name"]: m["capabilities"] for m in client.get("/api/tags").json()["models"]}
    assert all(tags[name] == capabilities for name, capabilities in expected.items())


def test_specs_are_set_per_instance_and_unknown_models_only_complete(fake, client):
    fake.models.append("mine:1b")
    assert client.post("/api/show", json={"model": "mine:1b"}).json()["capabilities"] == ["completion"]
    fake.specs["mine:1b"] = ModelSpec(("completion", "vision"), "mine", 8192, 16)
    assert client.post("/api/show", json={"model": "MINE:1b"}).json()["capabilities"] == ["completion", "vision"]
    with FakeOllama(models=["x:1b"], specs={"x:1b": ["embedding"]}) as other:
        assert httpx.post(f"{other.url}/api/show", json={"model": "x:1b"}).json()["capabilities"] == ["embedding"]
    fake.reset()
    assert "mine:1b" not in fake.specs and "mine:1b" not in fake.models


@pytest.mark.parametrize("path, body, status, error", [
    ("/api/chat", {"model": "phi:2.7b", "messages": ASK, "tools": TOOLS}, 400,
     "registry.ollama.ai/library/phi:2.7b does not support tools"),
    ("/api/chat", {"model": "phi:2.7b", "messages": ASK, "think": True}, 400, '"phi:2.7b" does not support thinking'),
    ("/api/chat", {"model": "phi:2.7b", "messages": ASK, "think": "low", "tools": TOOLS}, 400,
     '"phi:2.7b" does not support thinking'),
    ("/api/chat", {"model": "nomic-embed-text", "messages": ASK, "tools": TOOLS}, 400,
     '"nomic-embed-text" does not support chat'),
    ("/api/generate", {"model": "nomic-embed-text", "prompt": "hi"}, 400, '"nomic-embed-text" does not support generate'),
    ("/api/generate", {"model": "qwen2.5:7b", "prompt": "def f(", "suffix": "return"}, 400,
     "registry.ollama.ai/library/qwen2.5:7b does not support insert"),
    ("/api/generate", {"model": "phi:2.7b", "prompt": "hi", "raw": True, "system": "s"}, 400,
     "raw mode does not support template, system, or context"),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "think": "extreme"}, 400,
     'invalid think value: "extreme" (must be "high", "medium", "low", "max", true, or false)'),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "think": 1}, 400,
     'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "keep_alive": "5"}, 400,
     'time: missing unit in duration "5"'),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "keep_alive": "5d"}, 400,
     'time: unknown unit "d" in duration "5d"'),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "keep_alive": True}, 400, "Unsupported type: 'bool'"),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "options": {"temperature": "hot"}}, 500,
     'option "temperature" must be of type float32'),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "options": {"stop": [1]}}, 500,
     'option "stop" must be of an array of strings'),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "stream": "yes"}, 400,
     "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool"),
    ("/api/chat", {"model": "qwen3:8b", "messages": [{"role": "user", "content": 5}]}, 400,
     "json: cannot unmarshal number into Go struct field ChatRequest.messages.content of type string"),
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "top_logprobs": 21}, 400,
     "top_logprobs must be between 0 and 20"),
])
def test_what_a_model_cannot_do_gets_ollamas_own_error(client, path, body, status, error):
    r = client.post(path, json={**body, "stream": False} if "stream" not in body else body)
    assert (r.status_code, r.json()) == (status, {"error": error})


def test_think_false_and_no_tools_are_fine_for_a_plain_model(client):
    r = client.post("/api/chat", json={"model": "phi:2.7b", "messages": ASK, "think": False, "tools": [],
                                       "stream": False})
    assert r.status_code == 200 and r.json()["message"] == {"role": "assistant", "content": "Echo: weather in Tokyo?"}


# -- tools -------------------------------------------------------------------------------------------------------

def test_the_model_calls_the_first_tool_with_arguments_from_its_schema(client):
    body = chat(client, tools=TOOLS, think=False).json()
    assert body["message"] == {"role": "assistant", "content": "", "tool_calls": [{
        "id": body["message"]["tool_calls"][0]["id"],
        "function": {"index": 0, "name": "get_weather",
                     "arguments": {"city": "weather in Tokyo?", "unit": "celsius", "days": 1}}}]}
    assert list(body["message"]["tool_calls"][0]) == ["id", "function"]
    assert list(body["message"]["tool_calls"][0]["function"]) == ["index", "name", "arguments"]
    call_id = body["message"]["tool_calls"][0]["id"]
    assert call_id.startswith("call_") and len(call_id) == 13 and call_id[5:].isalnum() and call_id.islower()
    assert (body["done"], body["done_reason"]) == (True, "stop")  # Ollama's done_reason stays "stop"
    again = chat(client, tools=TOOLS, think=False).json()
    assert again["message"]["tool_calls"][0]["id"] == call_id  # deterministic, so direct and gateway compare
    other = chat(client, tools=TOOLS, think=False, messages=[{"role": "user", "content": "and Paris?"}]).json()
    assert other["message"]["tool_calls"][0]["id"] != call_id


def test_every_tool_by_marker_or_mode_and_nested_arguments(fake, client):
    ask_all = [{"role": "user", "content": "now [all tools]"}]
    calls = chat(client, tools=TOOLS, think=False, messages=ask_all).json()["message"]["tool_calls"]
    assert [(c["function"]["index"], c["function"]["name"]) for c in calls] == [(0, "get_weather"), (1, "get_time")]
    assert calls[1]["function"]["arguments"] == {"zone": {"name": "now [all tools]", "offset": 1.5},
                                                 "formats": ["iso"]}
    assert len({c["id"] for c in calls}) == 2
    named = chat(client, tools=TOOLS, messages=[{"role": "user", "content": "[tool:get_time] please"}]).json()
    assert [c["function"]["name"] for c in named["message"]["tool_calls"]] == ["get_time"]
    text = chat(client, tools=TOOLS, think=False, messages=[{"role": "user", "content": "hi [no tools]"}]).json()
    assert text["message"] == {"role": "assistant", "content": "Echo: hi [no tools]"}
    fake.tool_mode = "all"
    assert len(chat(client, tools=TOOLS).json()["message"]["tool_calls"]) == 2
    fake.tool_mode = "none"
    assert "tool_calls" not in chat(client, tools=TOOLS).json()["message"]


def test_a_tool_script_decides_the_calls(fake, client):
    fake.tool_script = [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time"}]
    calls = chat(client, tools=TOOLS).json()["message"]["tool_calls"]
    assert [c["function"] for c in calls] == [{"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}},
                                              {"index": 1, "name": "get_time", "arguments": {}}]
    seen = []
    fake.tool_script = lambda body: seen.append(body) or [{"name": "get_time", "arguments": {"n": len(seen)}}]
    assert chat(client, tools=TOOLS).json()["message"]["tool_calls"][0]["function"]["arguments"] == {"n": 1}
    assert seen[0]["tools"] == TOOLS


def test_after_a_tool_result_the_model_answers_quoting_it(client):
    first = chat(client, tools=TOOLS, think=False).json()["message"]
    history = [*ASK, first, {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather",
                             "tool_call_id": first["tool_calls"][0]["id"]}]
    body = chat(client, tools=TOOLS, think=False, messages=history).json()
    assert body["message"] == {"role": "assistant", "content": "Tool results: get_weather: 11 degrees celsius"}
    both = [*history, {"role": "tool", "content": "12:00", "tool_name": "get_time"}]
    assert chat(client, tools=TOOLS, think=False, messages=both).json()["message"]["content"] == (
        "Tool results: get_weather: 11 degrees celsius; get_time: 12:00")


def test_streamed_tool_calls_come_whole_after_the_thinking(fake, client):
    messages = [{"role": "user", "content": "go [all tools]"}]
    direct = chat(client, tools=TOOLS, messages=messages).json()["message"]["tool_calls"]
    with client.stream("POST", "/api/chat", json={"model": "qwen3:8b", "messages": messages, "tools": TOOLS}) as r:
        *parts, last = ndjson(r)
    kinds = ["thinking" if "thinking" in p["message"] else "tool_calls" for p in parts]
    assert kinds == ["thinking"] * kinds.count("thinking") + ["tool_calls", "tool_calls"]
    assert [c for p in parts for c in p["message"].get("tool_calls", [])] == direct
    assert all(p["message"]["content"] == "" for p in parts)
    assert last["done"] is True and last["message"] == {"role": "assistant", "content": ""}

    fake.tool_calls_per_chunk = 2  # several calls in one chunk
    with client.stream("POST", "/api/chat", json={"model": "qwen3:8b", "messages": messages, "tools": TOOLS,
                                                  "think": False}) as r:
        *parts, last = ndjson(r)
    assert [p["message"]["tool_calls"] for p in parts] == [direct]
    fake.tool_calls_per_chunk = 0  # all on the final chunk, as llama-server's path sends them
    with client.stream("POST", "/api/chat", json={"model": "qwen3:8b", "messages": messages, "tools": TOOLS,
                                                  "think": False}) as r:
        frames = ndjson(r)
    assert len(frames) == 1 and frames[0]["done"] is True and frames[0]["message"]["tool_calls"] == direct


# -- thinking ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("think, label", [(None, "true"), (True, "true"), ("low", "low"), ("medium", "medium"),
                                          ("high", "high"), ("max", "max")])
def test_a_thinking_model_thinks_at_the_level_asked_or_unasked(client, think, label):
    body = chat(client, **({} if think is None else {"think": think})).json()
    assert body["message"] == {"role": "assistant", "content": "Echo: weather in Tokyo?",
                               "thinking": f"Thinking (think={label}) about: weather in Tokyo?"}


def test_think_false_and_harmonys_levels(client):
    assert "thinking" not in chat(client, think=False).json()["message"]
    gpt = chat(client, model="gpt-oss:20b", think="max").json()
    assert gpt["message"]["thinking"].startswith("Thinking (think=high)")  # harmony knows no "max"


@pytest.mark.parametrize("path, body, key", [
    ("/api/chat", {"model": "qwen3:8b", "messages": ASK, "think": "high"}, "message"),
    ("/api/generate", {"model": "qwen3:8b", "prompt": "weather in Tokyo?", "think": "high"}, "response"),
])
def test_thinking_chunks_stream_before_content_chunks(client, path, body, key):
    whole = client.post(path, json={**body, "stream": False}).json()
    with client.stream("POST", path, json=body) as r:
        *parts, last = ndjson(r)

    def thinking(p):
        return p["message"].get("thinking", "") if key == "message" else p.get("thinking", "")

    def content(p):
        return p["message"]["content"] if key == "message" else p["response"]

    first_content = next(i for i, p in enumerate(parts) if content(p))
    assert all(thinking(p) and not content(p) for p in parts[:first_content])
    assert all(content(p) and not thinking(p) for p in parts[first_content:])
    assert "".join(map(thinking, parts)) == "Thinking (think=high) about: weather in Tokyo?"
    assert "".join(map(content, parts)) == "Echo: weather in Tokyo?"
    whole_thinking = whole["message"]["thinking"] if key == "message" else whole["thinking"]
    assert whole_thinking == "".join(map(thinking, parts))
    assert last["eval_count"] == whole["eval_count"] == 10  # thinking tokens count, as in Ollama
    assert (last["done"], thinking(last), content(last)) == (True, "", "")


# -- images ------------------------------------------------------------------------------------------------------

def test_a_vision_model_sees_the_images_and_they_are_recorded(fake, client):
    messages = [{"role": "user", "content": "what is this?", "images": [b64(PNG), b64(JPEG)]}]
    body = chat(client, model="llava:7b", messages=messages).json()
    assert body["message"]["content"] == "Echo: what is this? [2 images: png 67 bytes, jpeg 1000 bytes]"
    assert body["prompt_eval_count"] == 3 + 2 * 256
    generated = client.post("/api/generate", json={"model": "llava:7b", "prompt": "and this?",
                                                   "images": [b64(PNG)], "stream": False}).json()
    assert generated["response"] == "Echo: and this? [1 image: png 67 bytes]"
    assert [(i["path"], i["model"], i["type"], i["size"]) for i in fake.images] == [
        ("/api/chat", "llava:7b", "png", 67), ("/api/chat", "llava:7b", "jpeg", 1000),
        ("/api/generate", "llava:7b", "png", 67)]


@pytest.mark.parametrize("image, offset", [("abc", 0), ("aGk=x", 4), ("a=", 1), ("aGk*", 3), ("aGVsbG8", 4),
                                           ("aGVsbG8=\n", None), ("", None)])
def test_image_base64_is_checked_as_go_decodes_it(client, image, offset):
    r = chat(client, model="llava:7b", messages=[{"role": "user", "content": "x", "images": [image]}])
    if offset is None:  # valid base64, but not an image llama-server can read
        assert (r.status_code, r.json()) == (500, {"error": BAD_IMAGE})
    else:
        assert (r.status_code, r.json()) == (400, {"error": f"illegal base64 data at input byte {offset}"})


def test_images_sent_to_a_model_without_vision_fail_as_llama_server_fails_them(client):
    r = chat(client, model="qwen2.5:7b", messages=[{"role": "user", "content": "x", "images": [b64(PNG)]}])
    assert (r.status_code, r.json()) == (500, {"error": NO_VISION})


# -- /api/generate -----------------------------------------------------------------------------------------------

def test_generate_fill_in_the_middle_raw_and_context(client):
    body = client.post("/api/generate", json={"model": "qwen2.5-coder:1.5b", "prompt": "def gcd(a, b):",
                                              "suffix": "    return a", "stream": False}).json()
    assert body["response"] == "Fill: def gcd(a, b): ...     return a"
    assert len(body["context"]) == body["prompt_eval_count"] + body["eval_count"]
    raw = client.post("/api/generate", json={"model": "phi:2.7b", "prompt": "[INST] hi [/INST]", "raw": True,
                                             "stream": False}).json()
    assert raw["response"] == "Echo: [INST] hi [/INST]" and "context" not in raw
    assert client.post("/api/generate", json={"model": "phi:2.7b", "prompt": "hi", "format": "json",
                                              "stream": False}).json()["response"] == (
        '{"echo": "hi", "model": "phi:2.7b"}')


def test_loading_and_unloading_with_an_empty_request(client):
    loaded = client.post("/api/chat", json={"model": "qwen3:8b", "messages": []}).json()
    assert (loaded["done_reason"], loaded["message"]) == ("load", {"role": "assistant", "content": ""})
    assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["qwen3:8b"]
    unloaded = client.post("/api/generate", json={"model": "qwen3:8b", "keep_alive": "0s"}).json()
    assert (unloaded["done_reason"], unloaded["response"]) == ("unload", "")
    assert client.get("/api/ps").json() == {"models": []}


# -- embeddings --------------------------------------------------------------------------------------------------

def vector_text(raw_json: str) -> list[str]:
    start = raw_json.index('"embeddings":[[') + len('"embeddings":[[')
    return raw_json[start:].split("]", 1)[0].split(",")


def test_embed_gives_deterministic_unit_vectors_for_a_batch(client):
    r = client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["why is the sky blue", "hi"]})
    body = r.json()
    assert list(body) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    assert (body["model"], len(body["embeddings"]), body["prompt_eval_count"]) == ("nomic-embed-text", 2, 6)
    assert [len(v) for v in body["embeddings"]] == [768, 768]
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in body["embeddings"])
    single = client.post("/api/embed", json={"model": "nomic-embed-text:latest", "input": "hi"}).json()
    assert single["embeddings"] == [body["embeddings"][1]]  # same model and text, same vector
    other = client.post("/api/embed", json={"model": "qwen2.5:7b", "input": "hi"}).json()["embeddings"][0]
    assert len(other) == 3584 and other[:8] != body["embeddings"][1][:8]  # any model embeds; its own vector
    for number in vector_text(r.text):  # Go writes each float32 in its shortest form, not as a float64
        assert len(number.lstrip("-").replace("0.", "", 1).lstrip("0").split("e")[0].replace(".", "")) <= 9


def test_embed_dimensions_truncation_and_errors(client):
    full = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a b c"}).json()["embeddings"][0]
    cut = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a b c",
                                          "dimensions": 4}).json()["embeddings"][0]
    norm = math.sqrt(sum(x * x for x in full[:4]))
    assert len(cut) == 4 and all(abs(c - f / norm) < 1e-5 for c, f in zip(cut, full[:4]))
    long = " ".join(["word"] * 2050)  # nomic-embed-text's context is 2048
    truncated = client.post("/api/embed", json={"model": "nomic-embed-text", "input": long}).json()
    assert truncated["prompt_eval_count"] == 2048
    assert truncated["embeddings"] == client.post("/api/embed", json={
        "model": "nomic-embed-text", "input": " ".join(["word"] * 2048)}).json()["embeddings"]
    refused = client.post("/api/embed", json={"model": "nomic-embed-text", "input": long, "truncate": False})
    assert (refused.status_code, refused.json()) == (400, {"error": "the input length exceeds the context length"})
    assert client.post("/api/embed", json={"model": "nomic-embed-text", "input": [1]}).json() == {
        "error": "invalid input type"}
    assert client.post("/api/embed", json={"model": "nomic-embed-text"}).json() == {
        "model": "nomic-embed-text", "embeddings": []}
    missing = client.post("/api/embed", json={"model": "nope", "input": "x"})
    assert (missing.status_code, missing.json()) == (404, {"error": 'model "nope" not found, try pulling it first'})


def test_legacy_embeddings_give_the_runners_vector_unnormalised(client):
    legacy = client.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hi"}).json()["embedding"]
    modern = client.post("/api/embed", json={"model": "nomic-embed-text", "input": "hi"}).json()["embeddings"][0]
    norm = math.sqrt(sum(x * x for x in legacy))
    assert len(legacy) == 768 and norm > 2 and all(abs(m - x / norm) < 1e-5 for m, x in zip(modern, legacy))
    assert client.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": ""}).json() == {"embedding": []}
    assert client.post("/api/embeddings", json={"prompt": "x"}).json() == {"error": "model is required"}


# -- the /v1 layer, on the wire ------------------------------------------------------------------------------------

V1_CHAT = {"model": "qwen3:8b", "messages": ASK}


def test_v1_chat_completion_with_reasoning_and_tool_calls(client):
    r = client.post("/v1/chat/completions", json={**V1_CHAT, "tools": TOOLS, "reasoning_effort": "minimal"})
    assert r.headers["content-type"] == "application/json" and r.text.endswith("}\n")
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["system_fingerprint"] == "fp_ollama" and body["model"] == "qwen3:8b"
    native = client.post("/api/chat", json={**V1_CHAT, "tools": TOOLS, "think": "low", "stream": False}).json()
    call = native["message"]["tool_calls"][0]
    assert body["choices"] == [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "", "reasoning": "Thinking (think=low) about: weather in Tokyo?",
        "tool_calls": [{"id": call["id"], "index": 0, "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps(call["function"]["arguments"], separators=(",", ":"))}}]}}]
    assert body["usage"] == {"prompt_tokens": native["prompt_eval_count"], "completion_tokens": native["eval_count"],
                             "total_tokens": native["prompt_eval_count"] + native["eval_count"]}


def test_v1_stream_splits_reasoning_then_finishes_with_usage(client):
    with client.stream("POST", "/v1/chat/completions", json={
            **V1_CHAT, "stream": True, "stream_options": {"include_usage": True}, "reasoning": {"effort": "high"}},
    ) as r:
        assert r.headers["content-type"] == "text/event-stream"
        chunks = sse(r)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    assert "".join(d.get("reasoning", "") for d in deltas) == "Thinking (think=high) about: weather in Tokyo?"
    assert "".join(d.get("content", "") for d in deltas) == "Echo: weather in Tokyo?"
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1


@pytest.mark.parametrize("body, message", [
    ({"model": "qwen3:8b", "messages": []}, "[] is too short - 'messages'"),
    ({**V1_CHAT, "reasoning_effort": "extreme"},
     'invalid reasoning value: "extreme" (must be "minimal", "low", "medium", "high", "xhigh", "ultra", "max", '
     'or "none")'),
    ({"model": "llava:7b", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     "image URLs are not currently supported, please use base64 encoded data instead"),
    ({"model": "llava:7b", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}]}]}, "invalid image input"),
    ({"model": "qwen3:8b", "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "invalid tool call arguments"),
    ({"model": "qwen3:8b", "messages": [{"role": "user", "content": None}]}, "invalid message content type: <nil>"),
    ({"model": "qwen3:8b", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "invalid message format"),
    ({**V1_CHAT, "stream": "yes"},
     "json: cannot unmarshal string into Go struct field ChatCompletionRequest.stream of type bool"),
])
def test_v1_refusals_in_openais_error_shape(client, body, message):
    r = client.post("/v1/chat/completions", json=body)
    assert (r.status_code, r.json()) == (400, {"error": {"message": message, "type": "invalid_request_error",
                                                         "param": None, "code": None}})


def test_v1_passes_on_the_handlers_errors(client):
    missing = client.post("/v1/chat/completions", json={**V1_CHAT, "model": "nope:1b"})
    assert missing.status_code == 404 and missing.json()["error"] == {
        "message": 'model "nope:1b" not found, try pulling it first', "type": "not_found_error", "param": None,
        "code": None}
    refused = client.post("/v1/chat/completions", json={**V1_CHAT, "model": "phi:2.7b", "tools": TOOLS})
    assert (refused.status_code, refused.json()["error"]["message"]) == (
        400, "registry.ollama.ai/library/phi:2.7b does not support tools")
    bad = client.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "x", "encoding_format": "hex"})
    assert bad.json()["error"]["message"] == "Invalid value for 'encoding_format' = hex. Supported values: " \
                                             "['float', 'base64']."
    assert client.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": []}).json()["error"][
        "message"] == "invalid input"


def test_v1_what_ollama_ignores_or_maps(client):
    # response_format maps to format; tool_choice, a top-level think and keep_alive are not Ollama /v1 fields
    body = client.post("/v1/chat/completions", json={**V1_CHAT, "response_format": {"type": "json_object"},
                                                     "tools": TOOLS, "tool_choice": "none", "think": False,
                                                     "keep_alive": 0}).json()
    message = body["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"
    assert message["reasoning"].startswith("Thinking (think=true)")
    schema = {"type": "object", "properties": {"echo": {"type": "string"}}}
    shaped = client.post("/v1/chat/completions", json={**V1_CHAT, "reasoning_effort": "none", "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}).json()
    assert json.loads(shaped["choices"][0]["message"]["content"]) == {"echo": "weather in Tokyo?", "model": "qwen3:8b"}
    assert client.get("/api/ps").json()["models"][0]["name"] == "qwen3:8b"  # keep_alive 0 was not applied


def test_v1_faults_keep_openais_shapes(fake, client):
    fake.fault("status", times=1, status=500, message="CUDA error: out of memory")
    r = client.post("/v1/chat/completions", json=V1_CHAT)
    assert (r.status_code, r.json()) == (500, {"error": {"message": "CUDA error: out of memory", "type": "api_error",
                                                         "param": None, "code": None}})
    fake.fault("stream_error", times=1, after=2)
    with client.stream("POST", "/v1/chat/completions", json={**V1_CHAT, "stream": True}) as r:
        events = [line for line in r.iter_lines() if line]
    # Ollama's ChatWriter reads the error line as an empty response: one more empty chunk, then no [DONE]
    assert len(events) == 3 and events[-1] != "data: [DONE]"
    assert json.loads(events[-1][len("data: "):])["choices"][0]["delta"] == {"content": ""}


def test_v1_image_parts_become_ollama_images(fake, client):
    r = client.post("/v1/chat/completions", json={"model": "llava:7b", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(PNG)}}]}]})
    # Ollama's /v1 makes each part a message of its own; the image message is the last user message.
    assert r.json()["choices"][0]["message"]["content"] == "Echo:  [1 image: png 67 bytes]"
    assert [i["type"] for i in fake.images] == ["png"]


def test_v1_completions_and_model_listings(fake, client):
    body = client.post("/v1/completions", json={"model": "qwen2.5-coder:1.5b", "prompt": "def f(",
                                                "suffix": "pass"}).json()
    assert body["object"] == "text_completion" and body["choices"] == [
        {"text": "Fill: def f( ... pass", "index": 0, "finish_reason": "stop"}]
    with client.stream("POST", "/v1/completions", json={"model": "phi:2.7b", "prompt": "hi there", "stream": True,
                                                        "stream_options": {"include_usage": True}}) as r:
        chunks = sse(r)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "Echo: hi there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["usage"]["total_tokens"] == 0
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3,
                                                                   "total_tokens": 5}
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == MODELS
    assert listed["data"][0] == {"id": "qwen3:8b", "object": "model", "created": 1737367200, "owned_by": "library"}
    assert client.get("/v1/models/qwen3:8b").json() == listed["data"][0]
    missing = client.get("/v1/models/nope")
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found_error")
    fake.models.clear()
    assert client.get("/v1/models").json() == {"object": "list", "data": None}


# -- the real clients --------------------------------------------------------------------------------------------

@pytest.fixture
def oai(fake):
    return openai.OpenAI(base_url=f"{fake.url}/v1", api_key="ollama", max_retries=0)


@pytest.fixture
def oll(fake):
    return ollama.Client(host=fake.url)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_tools_round_trip(oai, stream):
    messages = [{"role": "user", "content": "weather in Tokyo?"}]

    def ask():
        if not stream:
            return oai.chat.completions.create(model="qwen3:8b", messages=messages, tools=TOOLS).choices[0]
        calls, content, finish = {}, "", None
        for chunk in oai.chat.completions.create(model="qwen3:8b", messages=messages, tools=TOOLS, stream=True):
            choice = chunk.choices[0]
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                calls[call.index] = call
        return content, finish, list(calls.values())

    if stream:
        content, finish, calls = ask()
    else:
        choice = ask()
        content, finish, calls = choice.message.content, choice.finish_reason, choice.message.tool_calls
    assert (content, finish) == ("", "tool_calls")
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "weather in Tokyo?", "unit": "celsius", "days": 1})]
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls]})
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "11 degrees"})  # no name: looked up
    final = oai.chat.completions.create(model="qwen3:8b", messages=messages, tools=TOOLS, reasoning_effort="none")
    assert final.choices[0].message.content == "Tool results: get_weather: 11 degrees"
    assert final.choices[0].finish_reason == "stop"


def test_openai_client_reasoning_images_and_errors(oai):
    reply = oai.chat.completions.create(model="qwen3:8b", messages=ASK, reasoning_effort="xhigh")
    assert reply.choices[0].message.content == "Echo: weather in Tokyo?"
    assert reply.choices[0].message.model_extra["reasoning"] == "Thinking (think=max) about: weather in Tokyo?"
    seen = oai.chat.completions.create(model="llava:7b", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + b64(JPEG)}}]}])
    assert seen.choices[0].message.content.endswith("[1 image: jpeg 1000 bytes]")
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope:1b", messages=ASK)
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        oai.chat.completions.create(model="phi:2.7b", messages=ASK, tools=TOOLS)
    assert [m.id for m in oai.models.list()] == MODELS
    assert oai.models.retrieve("llava:7b").owned_by == "library"


def test_openai_client_embeddings_match_the_native_vectors(oai, client):
    texts = ["why is the sky blue", "hi"]
    native = client.post("/api/embed", json={"model": "nomic-embed-text", "input": texts}).json()
    as_base64 = oai.embeddings.create(model="nomic-embed-text", input=texts)  # the SDK asks for base64 by default
    as_float = oai.embeddings.create(model="nomic-embed-text", input=texts, encoding_format="float")
    assert [d.embedding for d in as_float.data] == native["embeddings"]
    # base64 carries the float32 values themselves; the JSON numbers read back to exactly those float32s
    assert [d.embedding for d in as_base64.data] == [[f32(x) for x in v] for v in native["embeddings"]]
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == native["prompt_eval_count"]
    cut = oai.embeddings.create(model="nomic-embed-text", input="hi", dimensions=8)
    assert len(cut.data[0].embedding) == 8


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_client_tools_round_trip(oll, stream):
    messages = [{"role": "user", "content": "weather in Tokyo?"}]
    if stream:
        parts = list(oll.chat(model="qwen3:8b", messages=messages, tools=TOOLS, think=True, stream=True))
        thinking = "".join(p.message.thinking or "" for p in parts)
        calls = [c for p in parts for c in p.message.tool_calls or []]
    else:
        reply = oll.chat(model="qwen3:8b", messages=messages, tools=TOOLS, think=True)
        thinking, calls = reply.message.thinking, reply.message.tool_calls
    assert thinking == "Thinking (think=true) about: weather in Tokyo?"
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "weather in Tokyo?", "unit": "celsius", "days": 1})]
    messages += [{"role": "assistant", "content": "", "tool_calls": calls},
                 {"role": "tool", "content": "11 degrees", "tool_name": "get_weather"}]
    final = oll.chat(model="qwen3:8b", messages=messages, tools=TOOLS, think=False)
    assert final.message.content == "Tool results: get_weather: 11 degrees" and final.message.thinking is None


def test_ollama_client_images_generate_and_embeddings(oll):
    seen = oll.chat(model="llava:7b", messages=[{"role": "user", "content": "what?", "images": [PNG]}])
    assert seen.message.content == "Echo: what? [1 image: png 67 bytes]"
    generated = oll.generate(model="llava:7b", prompt="and?", images=[JPEG])
    assert generated.response == "Echo: and? [1 image: jpeg 1000 bytes]"
    thought = oll.generate(model="qwen3:8b", prompt="why?", think="low")
    assert (thought.thinking, thought.response) == ("Thinking (think=low) about: why?", "Echo: why?")
    filled = oll.generate(model="qwen2.5-coder:1.5b", prompt="def f(", suffix="pass")
    assert filled.response == "Fill: def f( ... pass"
    embedded = oll.embed(model="nomic-embed-text", input=["a", "b"], dimensions=16)
    assert [len(v) for v in embedded.embeddings] == [16, 16] and embedded.prompt_eval_count == 2
    assert len(oll.embeddings(model="nomic-embed-text", prompt="a").embedding) == 768
    assert oll.show("qwen3:8b").capabilities == ["completion", "tools", "thinking"]
    with pytest.raises(ollama.ResponseError, match="does not support tools") as refused:
        oll.chat(model="phi:2.7b", messages=ASK, tools=TOOLS)
    assert refused.value.status_code == 400
    loaded = [m.model for m in oll.ps().models]  # the most recently used first: the longest time left
    assert loaded[0] == "nomic-embed-text" and sorted(loaded) == ["llava:7b", "nomic-embed-text",
                                                                  "qwen2.5-coder:1.5b", "qwen3:8b"]
