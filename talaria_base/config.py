"""Settings loading shared by both sides: defaults < YAML file < environment < command-line flags.

Invalid values end the program with one line naming the key, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, YamlConfigSettingsSource

S = TypeVar("S", bound=BaseSettings)


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


def load_settings(cls: type[S], config_file: str | Path | None = None, **overrides: Any) -> S:
    """Build `cls` from (lowest to highest) its defaults, `config_file`, env vars, `overrides` (CLI flags)."""
    if config_file is not None and not Path(config_file).is_file():
        raise ConfigError(f"config file not found: {config_file}")
    flags = {k: v for k, v in overrides.items() if v is not None}

    class _WithFile(cls):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(cls_, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    try:
        return cls.model_validate(_WithFile(**flags).model_dump())
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "<root>"
        where = f" in {config_file}" if config_file else ""
        raise ConfigError(f"invalid config{where}: {key}: {first['msg']} (got {first.get('input')!r})") from None
    except Exception as exc:  # malformed YAML and the like
        detail = " ".join(str(exc).split())  # YAML errors span several lines; the contract is one
        raise ConfigError(f"cannot read config{' ' + str(config_file) if config_file else ''}: {detail}") from None


def exit_on_config_error(exc: ConfigError) -> int:
    print(f"talaria: {exc}", file=sys.stderr)
    return 2
