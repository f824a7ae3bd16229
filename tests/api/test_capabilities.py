"""The README's capability table is backed by tests: every row names tests that exist, and the
400/404 rows that no other module covers are checked here."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from api_helpers import MODEL, TIMEOUT, user

ROOT = Path(__file__).resolve().parents[2]
REF = re.compile(r"`?((?:api|engine|cloud|delivery)/test_\w+\.py)::(\w+)`?")


def capability_rows() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## OpenAI API", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]  # past header, rule


def test_every_capability_row_names_existing_tests():
    rows = capability_rows()
    assert len(rows) >= 10
    for what, status, tests in rows:
        refs = REF.findall(tests)
        assert refs, f"row {what!r} names no test"
        assert status.startswith(("supported", "400", "404", "accepted")), status
        for path, name in refs:
            source = (ROOT / "tests" / path).read_text()
            assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{path}::{name} (row {what!r}) does not exist"


def post(proxy, path: str, body: dict) -> httpx.Response:
    return httpx.post(proxy.url + path, json=body, timeout=TIMEOUT)


@pytest.mark.parametrize("extra, param", [
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
])
def test_unsupported_chat_fields_are_400(proxy, extra, param):
    r = post(proxy, "/v1/chat/completions", {"model": MODEL, "messages": user("Hi"), "max_tokens": 2, **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_best_of_other_than_n_is_400(proxy):
    r = post(proxy, "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "best_of": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
    assert post(proxy, "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "best_of": 1}).is_success


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/images/generations", "/v1/audio/speech", "/v1/files",
                                  "/v1/batches", "/v1/fine_tuning/jobs", "/v1/assistants"])
def test_other_endpoints_are_404(proxy, path):
    r = post(proxy, path, {"model": MODEL, "input": "Hi"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
