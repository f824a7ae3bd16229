"""Command-line flags come from the settings models (talaria_base.flags): every field has one, the
flag names users and scripts already rely on keep working, and --help explains each."""

from __future__ import annotations

import argparse
import re
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from cloud_backend import cli as cloud_cli
from cloud_backend.settings import CloudSettings
from talaria_base.flags import add_setting_flags, choices_of, given_settings
from talaria_base.config import load_settings
from talaria_proxy import cli as proxy_cli
from talaria_proxy.settings import ProxySettings

SIDES = {"proxy": (proxy_cli, ProxySettings), "cloud": (cloud_cli, CloudSettings)}

# Flags as the README, the images, `talaria up`, the benchmarks and the tests pass them (the
# fields that existed before flags were derived from the models; newer ones are covered below).
PROXY_ARGV = ["--cloud", "https://c:8100", "--cloud-api-key", "ck", "--cloud-ca-file", "ca.pem",
              "--cloud-timeout", "5", "--cloud-transport", "websocket", "--cloud-wait", "0", "--host", "0.0.0.0",
              "--port", "9000", "--served-model-name", "m", "--scheme", "none", "--mask-scale", "2.5",
              "--api-key", "k1", "--api-key", "k2", "--cors-origin", "*", "--max-batch-tokens", "64",
              "--max-running", "4", "--max-waiting", "0", "--batch-wait-ms", "0", "--max-model-len", "128",
              "--max-n", "2", "--request-timeout", "9", "--shutdown-drain", "1", "--threads", "1",
              "--log-level", "debug"]
PROXY_EXPECTED = {"cloud_url": "https://c:8100", "cloud_api_key": "ck", "cloud_ca_file": "ca.pem",
                  "cloud_timeout": 5.0, "cloud_transport": "websocket", "cloud_wait": 0.0, "host": "0.0.0.0",
                  "port": 9000, "served_model_name": "m", "scheme": "none", "mask_scale": 2.5,
                  "api_keys": ["k1", "k2"], "cors_origins": ["*"], "max_batch_tokens": 64, "max_running": 4,
                  "max_waiting": 0, "batch_wait_ms": 0.0, "max_model_len": 128, "max_n": 2,
                  "request_timeout": 9.0, "shutdown_drain": 1.0, "threads": 1, "log_level": "debug"}
CLOUD_ARGV = ["--model", "/m", "--host", "0.0.0.0", "--port", "8200", "--frame-port", "8201", "--api-key", "k",
              "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem", "--device", "cuda:0", "--compute-dtype",
              "float64", "--reply", "full", "--mask-rank", "16", "--mask-ranks", "lm_head=8",
              "--mask-ranks", '{"0.qkv": 4}', "--basis-seed", "7", "--record", "/tmp/rec", "--threads", "2",
              "--log-level", "warning"]
CLOUD_EXPECTED = {"model": "/m", "host": "0.0.0.0", "port": 8200, "frame_port": 8201, "api_key": "k",
                  "ssl_certfile": "c.pem", "ssl_keyfile": "k.pem", "device": "cuda:0", "compute_dtype": "float64",
                  "reply": "full", "mask_rank": 16, "mask_ranks": {"lm_head": 8, "0.qkv": 4}, "basis_seed": 7,
                  "record_dir": "/tmp/rec", "threads": 2, "log_level": "warning"}


def parser_for(side: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"talaria {side}")
    SIDES[side][0].add_arguments(parser)
    return parser


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith(("TALARIA_CLOUD_", "TALARIA_PROXY_")):
            monkeypatch.delenv(key)


@pytest.mark.parametrize("side", SIDES)
def test_every_field_has_exactly_one_flag(side):
    cls = SIDES[side][1]
    dests = [a.dest for a in parser_for(side)._actions if a.dest in cls.model_fields]
    assert sorted(dests) == sorted(cls.model_fields)


@pytest.mark.parametrize("side, argv, expected", [("proxy", PROXY_ARGV, PROXY_EXPECTED),
                                                   ("cloud", CLOUD_ARGV, CLOUD_EXPECTED)])
def test_existing_flag_names_reach_their_setting(side, argv, expected):
    cls = SIDES[side][1]
    given = given_settings(parser_for(side).parse_args(argv), cls)
    assert given == expected
    settings = load_settings(cls, None, **given).model_dump()
    assert {k: settings[k] for k in expected} == expected


@pytest.mark.parametrize("side", SIDES)
def test_flags_not_given_leave_the_lower_layers_alone(side, tmp_path):
    cls = SIDES[side][1]
    assert given_settings(parser_for(side).parse_args([]), cls) == {}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("threads: 3\nlog_level: error\n" + ("model: from-yaml\n" if side == "cloud" else ""))
    settings = load_settings(cls, cfg, **given_settings(parser_for(side).parse_args(["--threads", "5"]), cls))
    assert (settings.threads, settings.log_level) == (5, "error")


@pytest.mark.parametrize("side", SIDES)
def test_help_shows_every_description_and_default(side):
    cls = SIDES[side][1]
    text = " ".join(parser_for(side).format_help().split())
    for name, info in cls.model_fields.items():
        assert info.description and " ".join(info.description.split()) in text, name
        if not info.is_required() and info.default not in (None, "", [], {}) and info.default_factory is None:
            assert f"default: {info.default}" in text, name


@pytest.mark.parametrize("argv", [["--scheme", "rot13"], ["--port", "abc"], ["--max-n"]])
def test_bad_flag_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parser_for("proxy").parse_args(argv)
    assert exc.value.code == 2 and "usage: talaria proxy" in capsys.readouterr().err


class Toy(BaseModel):
    verbose: bool = Field(False, description="talk more")
    mode: Literal["a", "b"] | None = Field(None, description="a mode")
    level: Literal[1, 2] = Field(1, description="a level")
    ratio: float = Field(0.5, description="50% of it")
    tags: list[str] = Field(default_factory=list, description="labels")
    ports: list[int] = Field(default_factory=list, description="ports")
    limits: dict[str, float] = Field(default_factory=dict, description="per name")


def toy_parser(renamed=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_setting_flags(parser, Toy, renamed)
    return parser


def test_each_annotation_kind_parses():
    args = toy_parser().parse_args(["--verbose", "--mode", "b", "--level", "2", "--ratio", "2", "--tag", "x",
                                    "--tag", "y", "--port", "1", "--limits", "a=1.5", "--limits", '{"b": 2, "a": 3}'])
    assert given_settings(args, Toy) == {"verbose": True, "mode": "b", "level": 2, "ratio": 2.0, "tags": ["x", "y"],
                                         "ports": [1], "limits": {"a": 3.0, "b": 2.0}}
    assert given_settings(toy_parser().parse_args(["--no-verbose"]), Toy) == {"verbose": False}
    assert "50% of it" in toy_parser().format_help()  # a literal % must not break argparse's formatting


@pytest.mark.parametrize("argv", [["--limits", "a"], ["--limits", "a=x"], ["--limits", "[1]"], ["--level", "3"],
                                  ["--port", "p"], ["--mode", "c"]])
def test_each_annotation_kind_rejects_bad_values(argv):
    with pytest.raises(SystemExit):
        toy_parser().parse_args(argv)


def test_renamed_flags_and_their_misspellings():
    args = toy_parser({"tags": "--label"}).parse_args(["--label", "x"])
    assert args.tags == ["x"]
    with pytest.raises(KeyError, match="tagz"):
        toy_parser({"tagz": "--label"})


def test_an_unsupported_annotation_fails_when_the_parser_is_built():
    class Odd(BaseModel):
        nested: dict[str, list[int]] = Field(default_factory=dict, description="no flag shape for this")

    with pytest.raises(TypeError, match=re.escape("Odd.nested")):
        add_setting_flags(argparse.ArgumentParser(), Odd)


def test_choices_come_from_the_model():
    assert choices_of(ProxySettings, "scheme") == list(parser_for("proxy")._option_string_actions["--scheme"].choices)
    with pytest.raises(TypeError):
        choices_of(ProxySettings, "port")
