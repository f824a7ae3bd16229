"""POST /tokenize and /detokenize (vLLM's shapes), max_model_len in /v1/models, --chat-template.

The proxy's tokenizer must be AutoTokenizer.from_pretrained(checkpoint): the tiny qwen2
checkpoint's tokenizer_config.json names the generic TokenizersBackend, so this is also the
end-to-end tokenizer-parity check (digits are where the two classes differ).
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from api_helpers import MODEL, TIMEOUT, prompt_token_count, user

NUMBERS = "Call 0800-555-0199 at 3:30 pm; 12345 tickets cost $12.50 in 1969."


def post(proxy, path: str, body: dict) -> httpx.Response:
    return httpx.post(proxy.url + path, json=body, timeout=TIMEOUT)


def test_tokenize_prompt_equals_autotokenizer(proxy, tokenizer):
    r = post(proxy, "/tokenize", {"model": MODEL, "prompt": NUMBERS, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tokenizer.encode(NUMBERS)  # Qwen2Tokenizer: one token per digit
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 2048
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"])
    assert "token_strs" in post(proxy, "/tokenize", {"prompt": "x"}).json()  # model is optional, as in vLLM


def test_tokenize_messages_counts_like_chat(proxy, client, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *user(NUMBERS)]
    body = post(proxy, "/tokenize", {"model": MODEL, "messages": messages}).json()
    assert body["count"] == prompt_token_count(tokenizer, messages)
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert chat.usage.prompt_tokens == body["count"]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    plain = post(proxy, "/tokenize", {"messages": messages, "add_generation_prompt": False}).json()
    assert plain["tokens"] == tokenizer.encode(expected, add_special_tokens=False)


def test_detokenize_round_trip(proxy, tokenizer):
    ids = tokenizer.encode(NUMBERS)
    r = post(proxy, "/detokenize", {"model": MODEL, "tokens": ids})
    assert r.status_code == 200 and r.json() == {"prompt": tokenizer.decode(ids)}


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {"model": MODEL}, "prompt"),  # neither prompt nor messages
    ("/tokenize", {"prompt": "a", "messages": user("b")}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
    ("/detokenize", {"tokens": [10 ** 9]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_bad_requests_are_400(proxy, path, body, param):
    r = post(proxy, path, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_unknown_model_is_404(proxy):
    r = post(proxy, "/tokenize", {"model": "gpt-4o", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_models_report_max_model_len(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].max_model_len == 2048
    assert client.models.retrieve(MODEL).max_model_len == 2048


def test_chat_template_override(cloud, proxy_factory, tmp_path, tokenizer):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}[assistant] {% endif %}")
    custom = proxy_factory(cloud.url, "--chat-template", str(template))
    body = post(custom, "/tokenize", {"messages": user("Hello there")}).json()
    assert body["tokens"] == tokenizer.encode("[user] Hello there\n[assistant] ", add_special_tokens=False)
    r = httpx.post(custom.url + "/v1/chat/completions", timeout=TIMEOUT,
                   json={"model": MODEL, "messages": user("Hello there"), "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == body["count"]


def test_missing_chat_template_file_stops_the_proxy(tmp_path):
    missing = tmp_path / "nope.jinja"
    run = subprocess.run([sys.executable, "-m", "talaria_cli.main", "proxy", "--chat-template", str(missing)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "chat_template" in run.stderr and len(run.stderr.strip().splitlines()) == 1
