"""The Slack app manifest from manifests/slack-app.yaml, filled in for a command name and mode."""

from __future__ import annotations

import copy
import functools
import re
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import yaml

MANIFEST_PATH = resources.files("manifests") / "slack-app.yaml"
DEFAULT_COMMAND = "/batchai"
COMMAND_RE = re.compile(r"^/[a-z0-9_-]{1,31}$")
DEV_HOSTS = frozenset({"127.0.0.1", "localhost"})
MAX_URL_LENGTH = 3000  # the smallest limit of the three URL fields (slash command url)
MAX_NAME_LENGTH = 35
# The default command as a word in free text (not the prefix of a longer command name).
_COMMAND_IN_TEXT = re.compile(re.escape(DEFAULT_COMMAND) + r"(?![a-z0-9_-])")


@functools.cache
def _template() -> dict[str, Any]:
    """The shipped manifest, parsed once; callers get deep copies."""
    data = yaml.safe_load(MANIFEST_PATH.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"manifests/{MANIFEST_PATH.name}: expected a mapping at the top level")
    return data


def bot_scopes() -> tuple[str, ...]:
    """The bot token scopes the shipped manifest asks for, in manifest order."""
    scopes = _template()["oauth_config"]["scopes"]["bot"]
    return tuple(str(s) for s in scopes)


def validate_command(command: str) -> str:
    """Return `command` if it is a valid slash command name, else raise a one-line ValueError."""
    if not COMMAND_RE.fullmatch(command):
        raise ValueError(
            f"invalid slash command {command!r}: use '/' then 1-31 of a-z 0-9 _ - (e.g. /batchai)"
        )
    return command


def validate_request_url(url: str) -> str:
    """Return `url` if Slack may call it (https; http only on 127.0.0.1/localhost), else raise."""
    if any(ch.isspace() for ch in url) or len(url) > MAX_URL_LENGTH:
        raise ValueError(
            f"invalid request URL: must be one token of at most {MAX_URL_LENGTH} characters"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"invalid request URL {url!r}: cannot parse it") from None
    if not host:
        raise ValueError(f"invalid request URL {url!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("invalid request URL: must not contain a user name or password")
    if parts.fragment:
        raise ValueError(f"invalid request URL {url!r}: must not have a #fragment")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and host in DEV_HOSTS:
        return url
    raise ValueError(
        f"invalid request URL {url!r}: must be https:// (http:// only for 127.0.0.1 or localhost)"
    )


def _validate_app_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH or "\n" in name:
        raise ValueError(f"invalid app name {name!r}: one line of 1-{MAX_NAME_LENGTH} characters")
    return name


def _with_key_after(mapping: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    """A copy of `mapping` with `key` set to `value`, placed right after `after` if it is new."""
    if key in mapping:
        return {**mapping, key: value}
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        out[k] = v
        if k == after:
            out[key] = value
    if key not in out:
        out[key] = value
    return out


def _with_key_first(mapping: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    rest = {k: v for k, v in mapping.items() if k != key}
    return {key: value, **rest}


def manifest_dict(
    *,
    command: str = DEFAULT_COMMAND,
    request_url: str | None = None,
    app_name: str | None = None,
) -> dict[str, Any]:
    """The manifest as a dict: Socket Mode without `request_url`, HTTP mode with it."""
    validate_command(command)
    if request_url is not None:
        validate_request_url(request_url)
    data = copy.deepcopy(_template())

    info: dict[str, Any] = data["display_information"]
    if app_name is not None:
        info["name"] = _validate_app_name(app_name)
    if command != DEFAULT_COMMAND:
        for field in ("description", "long_description"):
            if isinstance(info.get(field), str):
                info[field] = _COMMAND_IN_TEXT.sub(lambda _m: command, info[field])

    features: dict[str, Any] = data["features"]
    commands: list[dict[str, Any]] = features["slash_commands"]
    commands[0]["command"] = command
    settings: dict[str, Any] = data["settings"]
    if request_url is not None:
        features["slash_commands"] = [
            _with_key_after(c, "command", "url", request_url) for c in commands
        ]
        settings["event_subscriptions"] = _with_key_first(
            settings["event_subscriptions"], "request_url", request_url
        )
        settings["interactivity"] = _with_key_after(
            settings["interactivity"], "is_enabled", "request_url", request_url
        )
        settings["socket_mode_enabled"] = False
    return data


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


def render_manifest(
    *,
    command: str = DEFAULT_COMMAND,
    request_url: str | None = None,
    app_name: str | None = None,
) -> str:
    """The manifest as YAML text, keys in the shipped order, ready to paste into api.slack.com."""
    data = manifest_dict(command=command, request_url=request_url, app_name=app_name)
    return yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=4096,  # no folding: one line per value, as Slack exports it
        default_flow_style=False,
    )
