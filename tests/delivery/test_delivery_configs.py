"""configs/*.yaml document every setting with its default, and the precedence
defaults < YAML < env < flags holds, with one-line errors naming the offending key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_backend.settings import CloudSettings
from talaria_base.config import ConfigError, load_settings
from talaria_proxy.settings import ProxySettings

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"cloud": (CloudSettings, REPO / "configs" / "cloud.yaml", {"model": "some/model"}),
           "proxy": (ProxySettings, REPO / "configs" / "proxy.yaml", {})}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Settings read TALARIA_CLOUD_* / TALARIA_PROXY_*: none may leak in from the caller."""
    for key in list(os.environ):
        if key.startswith(("TALARIA_CLOUD_", "TALARIA_PROXY_")):
            monkeypatch.delenv(key)


@pytest.mark.parametrize("side", CONFIGS)
def test_yaml_lists_every_field_with_a_comment(side):
    cls, path, _ = CONFIGS[side]
    text = path.read_text()
    for name in cls.model_fields:
        # Required fields (no default) appear commented out; the rest as live keys.
        match = re.search(rf"^(#\s*)?{name}:[^\n]*#\s*\S", text, flags=re.MULTILINE)
        assert match, f"{path.name} lacks a commented line for {name!r}"
        assert (match.group(1) is not None) == cls.model_fields[name].is_required(), name


@pytest.mark.parametrize("side", CONFIGS)
def test_yaml_values_are_the_defaults(side):
    cls, path, required = CONFIGS[side]
    assert load_settings(cls, path, **required) == cls(**required)


def test_env_overrides_yaml_and_flag_overrides_env(tmp_path, monkeypatch):
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text("port: 9001\nscheme: none\napi_keys: [from-yaml]\n")
    assert load_settings(ProxySettings, cfg).port == 9001
    monkeypatch.setenv("TALARIA_PROXY_PORT", "9002")
    monkeypatch.setenv("TALARIA_PROXY_API_KEYS", '["k1", "k2"]')
    s = load_settings(ProxySettings, cfg)
    assert (s.port, s.scheme, s.api_keys) == (9002, "none", ["k1", "k2"])
    s = load_settings(ProxySettings, cfg, port=9003, scheme=None)  # None: flag not given
    assert (s.port, s.scheme) == (9003, "none")


def test_cloud_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("model: from-yaml\nmask_rank: 8\n")
    assert load_settings(CloudSettings, cfg).model == "from-yaml"
    monkeypatch.setenv("TALARIA_CLOUD_MODEL", "from-env")
    monkeypatch.setenv("TALARIA_CLOUD_MASK_RANK", "16")
    s = load_settings(CloudSettings, cfg)
    assert (s.model, s.mask_rank) == ("from-env", 16)
    assert load_settings(CloudSettings, cfg, model="from-flag").model == "from-flag"


@pytest.mark.parametrize("body, key", [
    ('port: "abc"\n', "port"),
    ("port: 70000\n", "port"),
    ("scheme: rot13\n", "scheme"),
    ("bogus_key: 1\n", "bogus_key"),
])
def test_invalid_or_unknown_key_names_it(tmp_path, body, key):
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(body)
    with pytest.raises(ConfigError, match=rf"\b{key}\b"):
        load_settings(ProxySettings, cfg)


def test_invalid_env_value_names_the_key(monkeypatch):
    monkeypatch.setenv("TALARIA_CLOUD_PORT", "abc")
    with pytest.raises(ConfigError, match=r"\bport\b"):
        load_settings(CloudSettings, None, model="m")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(ProxySettings, tmp_path / "nope.yaml")


def _talaria(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALARIA_CLOUD_", "TALARIA_PROXY_"))}
    env["TALARIA_HOME"] = str(home)  # `up` must fail before generating anything, but never touch ~
    return subprocess.run([sys.executable, "-m", "talaria_cli.main", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)


@pytest.mark.parametrize("body", ['port: "abc"\n', "bogus_key: 1\n", "port: [\n"],
                         ids=["bad-value", "unknown-key", "malformed-yaml"])
@pytest.mark.parametrize("command", [["cloud", "--model", "unused"], ["proxy"], ["up"]])
def test_bad_config_exits_2_with_one_line(tmp_path, command, body):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(body)
    flag = "--config-proxy" if command == ["up"] else "--config"
    result = _talaria(*command, flag, str(cfg), home=tmp_path / "home")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(cfg) in lines[0]
    assert not (tmp_path / "home").exists()
