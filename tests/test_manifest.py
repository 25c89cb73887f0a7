"""The Slack app manifest: shipped YAML and rendered variants against Slack's JSON schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from bot.check import REQUIRED_SCOPES
from bot.manifest import MANIFEST_PATH, manifest_dict, render_manifest

SCHEMA_PATH = Path(__file__).parent / "fixtures" / "slack" / "manifest.schema.1.0.0.json"
MINIMAL_SCOPES = [
    "commands",
    "chat:write",
    "chat:write.public",
    "files:write",
    "usergroups:read",
    "channels:read",
    "groups:read",
    "im:read",
    "mpim:read",
    "channels:history",
    "groups:history",
    "im:history",
    "mpim:history",
    "im:write",
    "metadata.message:read",
]
README_PATH = Path(__file__).resolve().parents[1] / "README.md"
URL = "https://batchai.example.com/slack/events"


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def schema_errors(validator: Draft7Validator, manifest: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]


def shipped() -> dict[str, Any]:
    data = yaml.safe_load(MANIFEST_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_schema_fixture_is_the_slack_schema(validator: Draft7Validator) -> None:
    # The copy is byte-exact; a broken copy would make every other test here meaningless.
    assert validator.schema["title"] == "App Manifest"
    assert schema_errors(validator, {"display_information": {"name": "x"}, "bogus": 1})


def test_shipped_yaml_is_valid(validator: Draft7Validator) -> None:
    data = shipped()
    assert schema_errors(validator, data) == []
    assert data["_metadata"]["major_version"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"command": "/batchai-dev", "app_name": "Batch AI (dev)"},
        {"request_url": URL},
        {"request_url": "http://127.0.0.1:3000/slack/events", "command": "/bai"},
    ],
    ids=["socket", "socket-renamed", "http", "http-dev"],
)
def test_rendered_variants_are_valid(validator: Draft7Validator, kwargs: dict[str, Any]) -> None:
    text = render_manifest(**kwargs)
    data = yaml.safe_load(text)
    assert schema_errors(validator, data) == []
    assert data == manifest_dict(**kwargs)


def test_invalid_manifest_is_refused_by_schema(validator: Draft7Validator) -> None:
    data = manifest_dict()
    data["features"]["slash_commands"][0]["command"] = "batchai"  # no leading slash
    data["display_information"]["long_description"] = "too short"
    errors = schema_errors(validator, data)
    assert any("slash_commands/0/command" in e for e in errors)
    assert any("long_description" in e for e in errors)


def test_display_information() -> None:
    info = shipped()["display_information"]
    assert info["name"] == "Batch AI"
    assert 175 <= len(info["long_description"]) <= 4000
    assert 1 <= len(info["description"]) <= 140
    # The schema spells this "regex", which JSON Schema ignores: check it here.
    assert re.fullmatch(r"#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?", info["background_color"])


def test_features_and_settings() -> None:
    data = shipped()
    features, settings = data["features"], data["settings"]
    assert features["bot_user"] == {"display_name": "batchai", "always_online": True}
    assert features["app_home"] == {
        "home_tab_enabled": True,
        "messages_tab_enabled": True,
        "messages_tab_read_only_enabled": True,
    }
    (command,) = features["slash_commands"]
    assert command["command"] == "/batchai"
    assert command["should_escape"] is False
    assert "stream-file" in command["usage_hint"]
    assert "url" not in command
    assert "app_home_opened" in settings["event_subscriptions"]["bot_events"]
    assert settings["interactivity"] == {"is_enabled": True}
    assert "request_url" not in settings["event_subscriptions"]
    assert settings["socket_mode_enabled"] is True
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False


def test_scopes_are_exactly_the_minimal_list() -> None:
    assert shipped()["oauth_config"]["scopes"] == {"bot": MINIMAL_SCOPES}
    assert list(REQUIRED_SCOPES) == MINIMAL_SCOPES
    assert manifest_dict(request_url=URL)["oauth_config"]["scopes"]["bot"] == MINIMAL_SCOPES


def test_no_scope_the_code_does_not_use() -> None:
    # users:read was asked for "names of requesters and approvers"; the bot reads no profile.
    assert "users:read" not in REQUIRED_SCOPES
    root = README_PATH.parent
    code = [
        p.read_text() for d in ("bot", "handlers", "services") for p in (root / d).rglob("*.py")
    ]
    assert not any(re.search(r"\busers_(info|list|profile)", text) for text in code)


def test_the_manifest_comment_and_the_readme_give_each_scope_a_reason() -> None:
    comment = MANIFEST_PATH.read_text(encoding="utf-8").split("_metadata:")[0]
    explained = set(re.findall(r"^#   ([a-z.:_]+)\s", comment, flags=re.M))
    assert explained == set(REQUIRED_SCOPES)
    readme = README_PATH.read_text(encoding="utf-8")
    table = readme.split("#### Slack scopes")[1].split("\n#")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    in_table = {s for row in rows for s in re.findall(r"`([a-z.:_]+)`", row.split(" | ")[0])}
    assert in_table == set(REQUIRED_SCOPES)


def test_default_render_matches_the_shipped_file() -> None:
    assert manifest_dict() == shipped()
    assert list(yaml.safe_load(render_manifest())) == list(shipped())  # top-level key order


def test_command_substitution() -> None:
    data = manifest_dict(command="/batchai-dev")
    assert data["features"]["slash_commands"][0]["command"] == "/batchai-dev"
    long = data["display_information"]["long_description"]
    assert "/batchai-dev job create" in long
    assert re.search(r"/batchai(?![a-z0-9_-])", long) is None
    assert "/batchai-dev" in render_manifest(command="/batchai-dev")


def test_http_mode_sets_all_request_urls() -> None:
    data = manifest_dict(request_url=URL)
    command = data["features"]["slash_commands"][0]
    assert command["url"] == URL
    assert list(command)[:2] == ["command", "url"]
    assert data["settings"]["interactivity"] == {"is_enabled": True, "request_url": URL}
    assert data["settings"]["event_subscriptions"]["request_url"] == URL
    assert data["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]
    assert data["settings"]["socket_mode_enabled"] is False


def test_socket_mode_has_no_request_urls() -> None:
    text = render_manifest()
    assert "request_url" not in text
    assert "url:" not in text
    assert "socket_mode_enabled: true" in text


def test_render_keeps_shipped_key_order() -> None:
    text = render_manifest(request_url=URL)
    order = [line.split(":")[0] for line in text.splitlines() if re.match(r"^[a-z_]+:", line)]
    assert order == ["_metadata", "display_information", "features", "oauth_config", "settings"]
    settings = manifest_dict(request_url=URL)["settings"]
    assert list(settings) == list(shipped()["settings"])


def test_app_name() -> None:
    assert manifest_dict(app_name="  Batch AI staging ")["display_information"]["name"] == (
        "Batch AI staging"
    )
    for bad in ("", "x" * 36, "two\nlines"):
        with pytest.raises(ValueError, match="invalid app name"):
            manifest_dict(app_name=bad)


def test_results_are_copies() -> None:
    first = manifest_dict()
    first["oauth_config"]["scopes"]["bot"].append("admin")
    first["features"]["slash_commands"][0]["command"] = "/changed"
    assert manifest_dict() == shipped()


@pytest.mark.parametrize("command", ["/batchai", "/batchai-dev", "/b", "/bai_2", "/" + "a" * 31])
def test_valid_commands(command: str) -> None:
    assert manifest_dict(command=command)["features"]["slash_commands"][0]["command"] == command


@pytest.mark.parametrize(
    "command",
    ["batchai", "/", "/BatchAI", "/batch ai", "/batchai\n", "/" + "a" * 32, "//batchai", "/bätch"],
)
def test_invalid_commands(command: str) -> None:
    with pytest.raises(ValueError, match="invalid slash command") as err:
        render_manifest(command=command)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://batchai.example.com/slack/events",
        "https://batchai.example.com:8443/slack/events?x=1",
        "http://127.0.0.1:3000/slack/events",
        "http://localhost/slack/events",
        "https://127.0.0.1/slack/events",
    ],
)
def test_valid_request_urls(url: str) -> None:
    data = manifest_dict(request_url=url)
    assert data["settings"]["interactivity"]["request_url"] == url


@pytest.mark.parametrize(
    "url",
    [
        "http://batchai.example.com/slack/events",  # plain http off loopback
        "http://localhost.example.com/slack/events",
        "http://127.0.0.1.nip.io/slack/events",
        "ftp://batchai.example.com/",
        "batchai.example.com/slack/events",
        "https://",
        "https:///slack/events",
        "https://user:secret@batchai.example.com/slack/events",
        "https://batchai.example.com/slack events",
        "https://batchai.example.com:99999/",
        "https://batchai.example.com/#frag",
        "https://batchai.example.com/" + "a" * 3000,
        "",
    ],
)
def test_invalid_request_urls(url: str) -> None:
    with pytest.raises(ValueError, match="invalid request URL") as err:
        render_manifest(request_url=url)
    message = str(err.value)
    assert "\n" not in message
    assert "secret" not in message  # credentials in a URL are not echoed back
