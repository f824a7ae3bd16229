"""The proxy tokenizes exactly as `AutoTokenizer.from_pretrained(checkpoint)` does.

The proxy rebuilds its tokenizer from the files the cloud publishes. When tokenizer_config.json
names a generic class, AutoTokenizer picks the class from config.json's model_type (a qwen2
checkpoint gets Qwen2Tokenizer, whose pre-tokenizer splits digits one by one); without the
config, the same files give TokenizersBackend, which does not, so prompts with numbers came out
as different tokens. The end-to-end check through a running proxy is in test_tokenize.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

from cloud_backend.checkpoint import _read_tokenizer_files
from talaria_proxy.runtime import load_tokenizer

TEXTS = [
    "In 1969, 12345 astronauts paid $12.50 for 3 tickets.",
    "Room 204 at 3:30 pm; call 0800-555-0199 or 2024/06/30.",
    "no digits at all, only words",
]


@pytest.fixture(params=["TokenizersBackend", "PreTrainedTokenizerFast"])
def generic_checkpoint(request, tiny_model, tmp_path):
    """A tiny qwen2 checkpoint whose tokenizer_config.json names a generic tokenizer class."""
    ckpt = tmp_path / "qwen2-generic"
    shutil.copytree(tiny_model("qwen2"), ckpt)
    config_path = ckpt / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = request.param
    config_path.write_text(json.dumps(config))
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "qwen2"
    return ckpt


def test_published_tokenizer_equals_autotokenizer(generic_checkpoint):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(generic_checkpoint)
    rebuilt = load_tokenizer(_read_tokenizer_files(str(generic_checkpoint)))
    assert type(rebuilt).__name__ == type(reference).__name__
    for text in TEXTS:
        assert rebuilt.encode(text) == reference.encode(text), text
    # The case that differed: a digit run is one token per digit in the checkpoint's own class.
    ids = reference.encode("12345", add_special_tokens=False)
    assert len(ids) == 5 and rebuilt.encode("12345", add_special_tokens=False) == ids


def test_published_config_is_minimal(generic_checkpoint):
    """Only what AutoTokenizer reads of the config travels: the model type (and a tokenizer class)."""
    files = _read_tokenizer_files(str(generic_checkpoint))
    assert json.loads(files["config.json"]) == {"model_type": "qwen2"}
    rebuilt = load_tokenizer({**files, "config.json": json.dumps({"model_type": "qwen2", "auto_map": {"x": "y"},
                                                                   "hidden_size": 7})})
    assert rebuilt.encode(TEXTS[0]) == load_tokenizer(files).encode(TEXTS[0])
