"""What real clients send besides plain chat, and how it reaches Ollama: keep_alive, Ollama's options in the OpenAI
dialect, null options, thinking switches, tool definitions and replayed conversations, /api/generate's own fields,
any Content-Type with an Origin allow-list, GET /, and end users behind a shared key."""

import json

import httpx
import ollama as ollama_client
import openai
import pytest

from llm.models import Generation, ToolSet
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, timeout=10, max_retries=0)


def only_row() -> Generation:
    row = wait_for(lambda: Generation.objects.exclude(status="pending").first())
    assert Generation.objects.count() == 1
    return row


def chat(gateway, path="/v1/chat/completions", **body):
    with gateway.client() as http:
        return http.post(path, json={"model": "qwen2.5:7b", "messages": HELLO, **body})


def sent(ollama) -> dict:
    return ollama.requests[-1].json


@pytest.fixture
def thinker(ollama):
    """A reasoning model (tools and thinking) on the fake Ollama."""
    ollama.models.append("qwen3:8b")
    return "qwen3:8b"


# -- keep_alive ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["10m", 300, "1h", "29m59s", 0.5])
def test_keep_alive_within_the_operators_maximum_is_passed_on(gateway, ollama, settings, value):
    settings.KEEP_ALIVE_MAX = 3600
    ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"}, trust_env=False) \
        .chat(model="qwen2.5:7b", messages=HELLO, keep_alive=value)

    assert sent(ollama)["keep_alive"] == value


def test_keep_alive_at_the_top_level_of_the_openai_dialect(gateway, ollama):
    response = chat(gateway, keep_alive="5m")

    assert response.status_code == 200 and sent(ollama)["keep_alive"] == "5m"


@pytest.mark.parametrize("value, says", [
    ("2h", "At most 30m (KEEP_ALIVE_MAX"), (7200, "At most 30m"), (-1, "for ever"), ("-5m", "for ever"),
    (0, "unloads the model for every other consumer"), ("0", "unloads"), ("0s", "unloads"),
    ("soon", "a duration such as"), (True, "a duration such as"), ([5], "a duration such as"),
    (10**400, "At most 30m"),
])
def test_keep_alive_outside_the_maximum_is_refused_in_both_dialects(gateway, ollama, value, says):
    native = chat(gateway, "/api/chat", keep_alive=value, stream=False)
    openai_style = chat(gateway, keep_alive=value)

    assert native.status_code == 400 and says in native.json()["error"] and "keep_alive" in native.json()["error"]
    assert openai_style.status_code == 400 and openai_style.json()["error"]["param"] == "keep_alive"
    assert says in openai_style.json()["error"]["message"]
    assert ollama.requests == []
    assert Generation.objects.filter(error_type="invalid_request", http_status=400).count() == 2


# -- options --------------------------------------------------------------------------------------------------------


def test_ollamas_options_at_the_top_level_of_the_openai_dialect(gateway, ollama):
    response = chat(gateway, num_ctx=8192, top_k=20, repeat_penalty=1.1, min_p=0.05, temperature=0.3,
                    max_tokens=64, num_predict=64)

    assert response.status_code == 200, response.text
    assert sent(ollama)["options"] == {"num_ctx": 8192, "top_k": 20, "repeat_penalty": 1.1, "min_p": 0.05,
                                       "temperature": 0.3, "num_predict": 64}


def test_conflicting_openai_and_ollama_names_are_refused(gateway, ollama):
    response = chat(gateway, max_tokens=10, num_predict=20)

    assert response.status_code == 400 and response.json()["error"]["param"] == "num_predict"


@pytest.mark.parametrize("name", ["num_gpu", "num_thread", "use_mmap", "main_gpu", "num_batch"])
def test_load_time_options_are_refused_as_the_operators_in_both_dialects(gateway, ollama, name):
    openai_style = chat(gateway, **{name: 1})
    native = chat(gateway, "/api/chat", options={name: 1}, stream=False)

    error = openai_style.json()["error"]
    assert openai_style.status_code == 400 and error["param"] == name
    assert "load-time option" in error["message"] and "operator" in error["message"]
    assert native.status_code == 400 and "load-time option" in native.json()["error"]
    assert ollama.requests == []


def test_num_ctx_is_bounded_by_the_operator(gateway, ollama, settings):
    settings.NUM_CTX_MAX = 8192

    openai_style = chat(gateway, num_ctx=16384)
    native = chat(gateway, "/api/chat", options={"num_ctx": 16384}, stream=False)
    within = chat(gateway, num_ctx=8192)

    assert openai_style.status_code == 400 and "NUM_CTX_MAX" in openai_style.json()["error"]["message"]
    assert native.status_code == 400 and "At most 8192 (NUM_CTX_MAX" in native.json()["error"]
    assert within.status_code == 200 and sent(ollama)["options"] == {"num_ctx": 8192}


def test_null_options_mean_unset_as_llamaindex_sends_them(gateway, ollama):
    native = chat(gateway, "/api/chat", stream=False, options={"temperature": None, "num_ctx": 4096, "seed": None})
    openai_style = chat(gateway, temperature=None, top_k=None, seed=3)

    assert native.status_code == 200 and openai_style.status_code == 200
    first, second = (r.json for r in ollama.requests)
    assert first["options"] == {"num_ctx": 4096}
    assert second["options"] == {"seed": 3}


# -- thinking -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("effort, think", [
    ("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"), ("high", "high"), ("xhigh", "high"),
])
def test_reasoning_effort_becomes_ollamas_think(gateway, ollama, thinker, effort, think):
    sdk(gateway).chat.completions.create(model=thinker, messages=HELLO, reasoning_effort=effort)
    assert sent(ollama)["think"] == think
    assert chat(gateway, model=thinker, reasoning={"effort": effort}).status_code == 200
    assert sent(ollama)["think"] == think


def test_no_reasoning_effort_sends_no_think(gateway, ollama):
    chat(gateway)
    assert "think" not in sent(ollama)


@pytest.mark.parametrize("body, param", [
    ({"reasoning_effort": "ultra"}, "reasoning_effort"), ({"reasoning_effort": 3}, "reasoning_effort"),
    ({"reasoning": {"effort": "huge"}}, "reasoning.effort"), ({"reasoning": {"summary": "auto"}}, "reasoning"),
    ({"think": "very"}, "think"), ({"reasoning_effort": "low", "think": "high"}, "reasoning_effort"),
])
def test_bad_reasoning_values_are_400_naming_the_parameter(gateway, ollama, body, param):
    response = chat(gateway, **body)

    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert ollama.requests == []


@pytest.mark.parametrize("think", [True, False, "low", "medium", "high", "max"])
def test_think_passes_through_the_ollama_dialect_and_open_webuis_v1_switch(gateway, ollama, thinker, think):
    assert chat(gateway, "/api/chat", model=thinker, think=think, stream=False).status_code == 200
    assert sent(ollama)["think"] == think
    assert chat(gateway, model=thinker, think=think).status_code == 200
    assert sent(ollama)["think"] == think


def test_open_webuis_reasoning_effort_inside_the_ollama_options(gateway, ollama, thinker):
    response = chat(gateway, "/api/chat", model=thinker, stream=False,
                    options={"reasoning_effort": "minimal", "temperature": 0.5})

    assert response.status_code == 200
    assert sent(ollama)["think"] == "low" and sent(ollama)["options"] == {"temperature": 0.5}


def test_a_bad_think_is_refused_in_ollamas_shape(gateway, ollama):
    response = chat(gateway, "/api/chat", think="maximum", stream=False)

    assert response.status_code == 400 and response.json()["error"].startswith("think:")
    assert only_row().dialect == "ollama"


# -- tools offered ----------------------------------------------------------------------------------------------------


def test_openai_tools_reach_ollama_and_are_stored_once_per_distinct_set(gateway, ollama):
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    for _ in range(3):
        assert chat(gateway, tools=[strict, CLOCK]).status_code == 200
    assert chat(gateway, tools=[CLOCK]).status_code == 200

    assert sent(ollama)["tools"] == [CLOCK]
    assert ollama.requests[0].json["tools"] == [WEATHER, CLOCK]  # strict accepted and dropped
    assert ToolSet.objects.count() == 2
    kept = ToolSet.objects.get(count=2)
    assert kept.definitions == [WEATHER, CLOCK] and len(kept.sha256) == 64
    rows = Generation.objects.order_by("created_at")
    assert [row.tool_set_id for row in rows][:3] == [kept.sha256] * 3
    # The row's copy of the request points at the set instead of repeating it.
    assert rows[0].request["tools"] == {"tool_set": kept.sha256, "count": 2}


@pytest.mark.parametrize("choice, offered", [
    ("auto", ["get_weather", "get_time"]), ("required", ["get_weather", "get_time"]), ("none", None),
    ({"type": "function", "function": {"name": "get_time"}}, ["get_time"]), (None, ["get_weather", "get_time"]),
])
def test_tool_choice_is_never_refused(gateway, ollama, choice, offered):
    response = chat(gateway, tools=[WEATHER, CLOCK], tool_choice=choice, parallel_tool_calls=False)

    assert response.status_code == 200, response.text
    tools = sent(ollama).get("tools")
    assert ([t["function"]["name"] for t in tools] if tools else None) == offered


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_tool_definitions_are_400_naming_the_parameter(gateway, ollama, body, param):
    response = chat(gateway, **body)

    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert ollama.requests == []


def test_a_replayed_agent_conversation_becomes_ollamas_messages(gateway, ollama):
    messages = [
        {"role": "user", "content": "Weather in Paris and the time?"},
        {"role": "assistant", "content": None, "reasoning_content": "Two tools.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
        {"role": "tool", "tool_call_id": "call_2", "name": "clock", "content": [{"type": "text", "text": "12:00"}]},
    ]

    response = chat(gateway, messages=messages, tools=[WEATHER, CLOCK])

    assert response.status_code == 200, response.text
    assert sent(ollama)["messages"] == [
        {"role": "user", "content": "Weather in Paris and the time?"},
        {"role": "assistant", "content": "", "thinking": "Two tools.", "tool_calls": [
            {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "call_2", "function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "Sunny, 21 C", "tool_name": "get_weather", "tool_call_id": "call_1"},
        {"role": "tool", "content": "12:00", "tool_name": "clock", "tool_call_id": "call_2"},
    ]
    row = only_row()
    assert row.prompt[2] == {"role": "tool", "content": "Sunny, 21 C", "tool_name": "get_weather",
                             "tool_call_id": "call_1"}
    assert row.prompt[1]["tool_calls"][0] == {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", "", None])
def test_replayed_arguments_that_are_not_a_json_object_are_400_naming_them(gateway, ollama, arguments):
    messages = [{"role": "user", "content": "Go."}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": arguments}}]}]

    response = chat(gateway, messages=messages)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    assert ollama.requests == []


def test_ollama_tool_messages_pass_through_as_sent(gateway, ollama):
    replayed = {"id": "call_abc12345", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": "", "thinking": "Call it.", "tool_calls": [replayed]},
                {"role": "tool", "content": "Rain", "tool_name": "get_weather", "tool_call_id": "call_abc12345"}]

    response = chat(gateway, "/api/chat", messages=messages, tools=[WEATHER], stream=False)

    assert response.status_code == 200, response.text
    assert sent(ollama)["messages"] == messages and sent(ollama)["tools"] == [WEATHER]


# -- /api/generate -----------------------------------------------------------------------------------------------------


def test_generate_sends_suffix_and_raw_to_ollamas_generate_and_records_them(gateway, ollama):
    client = ollama_client.Client(host=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"},
                                  trust_env=False)

    ollama.models.append("qwen2.5-coder:1.5b")  # a model that can fill in the middle

    reply = client.generate(model="qwen2.5-coder:1.5b", prompt="def add(a, b):\n", suffix="\n    return c\n",
                            raw=True, options={"temperature": 0})

    assert reply.done
    request = ollama.requests[-1]
    assert request.path == "/api/generate"
    assert (request.json["prompt"], request.json["suffix"], request.json["raw"]) == ("def add(a, b):\n",
                                                                                     "\n    return c\n", True)
    row = only_row()
    assert row.prompt == {"prompt": "def add(a, b):\n", "suffix": "\n    return c\n", "raw": True}
    assert (row.endpoint, row.output) == ("/api/generate", reply.response)


def test_generate_context_stays_refused(gateway, ollama):
    response = chat(gateway, "/api/generate", prompt="hi", context=[1, 2, 3])

    assert response.status_code == 400 and "context" in response.json()["error"]
    assert ollama.requests == []


# -- Content-Type, Origin, GET / -----------------------------------------------------------------------------------------


def test_the_ollama_dialect_reads_json_whatever_the_content_type(gateway, ollama):
    body = json.dumps({"model": "qwen2.5:7b", "prompt": "Hello", "stream": False})
    with gateway.client() as http:
        # What `curl -d` sends, as in Ollama's own docs.
        form = http.post("/api/generate", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        garbage = http.post("/api/generate", content=b"model=qwen&prompt=hi",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        openai_form = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "text/plain"})

    assert form.status_code == 200, form.text
    assert garbage.status_code == 400 and "not valid JSON" in garbage.json()["error"]
    assert openai_form.status_code == 415  # the OpenAI dialect keeps to JSON


def test_browser_origins_outside_the_allow_list_are_refused_and_audited(gateway, ollama, settings):
    settings.OLLAMA_DIALECT_ORIGINS = ("https://chat.example.com", "http://localhost:*")
    body = json.dumps({"model": "qwen2.5:7b", "prompt": "Hello", "stream": False})

    def post(origin):
        headers = {"Content-Type": "text/plain"} | ({"Origin": origin} if origin else {})
        with gateway.client() as http:
            return http.post("/api/generate", content=body, headers=headers)

    evil = post("https://evil.example")
    assert evil.status_code == 403 and "OLLAMA_DIALECT_ORIGINS" in evil.json()["error"]
    assert post("https://chat.example.com").status_code == 200
    assert post("http://localhost:3000").status_code == 200
    assert post(None).status_code == 200  # not a browser
    assert len(ollama.requests) == 3
    refused = Generation.objects.get(error_type="origin_not_allowed")
    assert (refused.http_status, refused.consumer.name) == (403, "test-team")


def test_the_root_answers_ollama_is_running_without_a_key(gateway):
    get = httpx.get(f"{gateway.url}/", trust_env=False)
    head = httpx.head(f"{gateway.url}/", trust_env=False)

    assert (get.status_code, get.text) == (200, "Ollama is running")
    assert get.headers["content-type"].startswith("text/plain")
    assert head.status_code == 200 and head.content == b""
    assert Generation.objects.count() == 0


# -- end users ------------------------------------------------------------------------------------------------------


def test_the_end_user_comes_from_the_first_configured_header_and_openais_user_wins(gateway, ollama, settings):
    settings.END_USER_HEADERS = ("X-OpenWebUI-User-Email", "X-OpenWebUI-User-Id")
    with gateway.client() as http:
        http.post("/api/chat", headers={"X-OpenWebUI-User-Id": "42", "X-OpenWebUI-User-Email": "ann@example.com"},
                  json={"model": "qwen2.5:7b", "messages": HELLO, "stream": False})
        http.post("/api/chat", headers={"X-OpenWebUI-User-Id": "42"},
                  json={"model": "qwen2.5:7b", "messages": HELLO, "stream": False})
        http.post("/v1/chat/completions", headers={"X-OpenWebUI-User-Email": "ann@example.com"},
                  json={"model": "qwen2.5:7b", "messages": HELLO, "user": "bob"})
        http.post("/v1/chat/completions", json={"model": "qwen2.5:7b", "messages": HELLO, "user": "x" * 300})

    users = list(Generation.objects.order_by("created_at").values_list("end_user", flat=True))
    assert users == ["ann@example.com", "42", "bob", "x" * 256]
