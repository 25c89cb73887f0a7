"""deploy/k8s/: every manifest is a valid Kubernetes object (the `kubernetes` client's models,
strictly: a misspelt field is an error, not silently dropped), and the pieces fit the bot and
each other: probes on the routes and port bot/web.py serves, env names the settings read, secret
keys the Secret has, selectors that select the pods, the settings a pod would start with."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import pydantic
import pytest
import yaml
from cryptography.fernet import Fernet

from bot.config import Settings
from bot.web import create_probe_app

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
VARIANTS = ("sqlite", "postgres")
NAMESPACE = "batchai"
PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")
# Variables the pod reads that are not the bot's settings, and who reads them.
OTHER_PROGRAMS = {
    "MPLCONFIGDIR": "matplotlib's cache folder (the root filesystem is read-only)",
    "AZURE_CLIENT_ID": "azure-identity's workload identity (the service account's annotation)",
}


def settings_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def model_name(doc: dict[str, Any]) -> str:
    version = doc["apiVersion"].rsplit("/", 1)[-1]
    return version[0].upper() + version[1:] + doc["kind"]


def validate(doc: dict[str, Any]) -> Any:
    """The client's model of the object (pydantic, extra fields forbidden: a misspelt field is
    an error, as is a wrong type or a missing required field)."""
    return getattr(kubernetes.client, model_name(doc)).model_validate(doc)


@dataclass
class Manifest:
    file: Path
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])


def load(folder: Path) -> list[Manifest]:
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yaml.in"))
    return [Manifest(f, d) for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def variant(name: str) -> list[Manifest]:
    """What the README applies for one variant: the common files and the variant's own."""
    return load(K8S / "common") + load(K8S / name)


def one(manifests: list[Manifest], kind: str) -> dict[str, Any]:
    found = [m.doc for m in manifests if m.kind == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(manifests: list[Manifest]) -> dict[str, Any]:
    (bot,) = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return bot


ALL = [m for name in ("common", *VARIANTS) for m in load(K8S / name)]


def test_the_two_variants_and_their_files_are_there() -> None:
    kinds = {name: sorted(m.kind for m in variant(name)) for name in VARIANTS}
    assert kinds["sqlite"] == sorted(
        ["Namespace", "Service", "NetworkPolicy", "ServiceAccount", "ConfigMap"]
        + ["Deployment", "PersistentVolumeClaim", "Secret"]
    )
    assert kinds["postgres"] == sorted(
        ["Namespace", "Service", "NetworkPolicy", "ServiceAccount", "ConfigMap"]
        + ["Deployment", "PodDisruptionBudget", "Secret"]
    )


@pytest.mark.parametrize("manifest", ALL, ids=lambda m: f"{m.file.parent.name}/{m.file.name}")
def test_every_manifest_is_a_valid_kubernetes_object(manifest: Manifest) -> None:
    obj = validate(manifest.doc)
    assert obj.metadata.name == manifest.name
    if manifest.kind != "Namespace":
        assert obj.metadata.namespace == NAMESPACE
    assert manifest.doc["metadata"]["labels"]["app.kubernetes.io/name"] == "batchai-bot"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda bot, spec: bot.update(readinesProbe=bot.pop("readinessProbe")), "readinesProbe"),
        (lambda bot, spec: bot["resources"]["requests"].update(cpu=["200m"]), "requests.cpu"),
        (lambda bot, spec: spec.pop("selector"), "selector"),
        (lambda bot, spec: bot["livenessProbe"]["httpGet"].pop("port"), "httpGet.port"),
    ],
    ids=["misspelt field", "wrong type", "missing selector", "missing probe port"],
)
def test_the_validation_refuses_a_broken_deployment(change: Any, error: str) -> None:
    doc = yaml.safe_load((K8S / "sqlite" / "deployment.yaml").read_text())
    change(doc["spec"]["template"]["spec"]["containers"][0], doc["spec"])
    with pytest.raises(pydantic.ValidationError, match=re.escape(error)):
        validate(doc)


def test_placeholders_only_in_templates_and_only_known_names() -> None:
    known = settings_names() | set(OTHER_PROGRAMS)
    for path in sorted(K8S.rglob("*")):
        if path.is_dir():
            continue
        names = set(PLACEHOLDER.findall(path.read_text()))
        if path.name.endswith(".yaml.in"):
            assert names, f"{path.name}: a template with nothing to fill in"
            assert names <= known, f"{path.name}: unknown {sorted(names - known)}"
        else:
            assert "$" not in path.read_text(), f"{path.name} is applied as is: no placeholders"


@pytest.mark.parametrize("name", VARIANTS)
def test_env_names_are_the_bots_settings(name: str) -> None:
    manifests = variant(name)
    known = settings_names() | set(OTHER_PROGRAMS)
    env = [e["name"] for e in container(manifests)["env"]]
    assert len(env) == len(set(env)), "a variable set twice"
    assert set(env) <= known, sorted(set(env) - known)
    config = one(manifests, "ConfigMap")["data"]
    assert set(config) <= settings_names(), sorted(set(config) - settings_names())
    assert not set(config) & set(env), "set both in the ConfigMap and the Deployment"


@pytest.mark.parametrize("name", VARIANTS)
def test_secret_keys_referenced_are_the_secrets_and_named_after_their_variable(name: str) -> None:
    manifests = variant(name)
    secret = one(manifests, "Secret")
    keys = set(secret["stringData"])
    used = {}
    for e in container(manifests)["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in keys, f"{e['name']}: no key {ref['key']} in the Secret"
            assert ref["key"] == e["name"].lower().replace("_", "-")
            used[ref["key"]] = e["name"]
    assert set(used) == keys, f"keys nobody reads: {sorted(keys - set(used))}"
    for key, value in secret["stringData"].items():  # filled from the environment, never literal
        assert value == "${" + used[key] + "}"
    (ref,) = container(manifests)["envFrom"]
    assert ref["configMapRef"]["name"] == one(manifests, "ConfigMap")["metadata"]["name"]


def pod_env(manifests: list[Manifest]) -> dict[str, str]:
    """The environment a pod of this variant starts with, the placeholders filled as an
    operator would fill them."""
    filled = {
        "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
        "SLACK_APP_TOKEN": "xapp-1-A1-2-abc",
        "AZURE_STORAGE_KEY": "a2V5",
        "SECRETS_KEY": Fernet.generate_key().decode(),
        "LINK_SECRET": "0" * 64,
        "DATABASE_URL": "postgresql://batchai:pw@db.example.com:5432/batchai",
        "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "AZURE_RESOURCE_GROUP": "batchai",
        "AZURE_LOCATION": "eastus",
        "AZURE_SUBNET_ID": "/subscriptions/0/resourceGroups/batchai/providers/"
        "Microsoft.Network/virtualNetworks/batchai-vnet/subnets/nodes",
        "AZURE_STORAGE_ACCOUNT": "batchaistore",
        "AZURE_SHARE": "batchai-bot",
    }

    def fill(value: str) -> str:
        return PLACEHOLDER.sub(lambda m: filled[m.group(1)], value)

    secret = one(manifests, "Secret")["stringData"]
    env = {k: fill(v) for k, v in one(manifests, "ConfigMap")["data"].items()}
    for e in container(manifests)["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = fill(secret[e["valueFrom"]["secretKeyRef"]["key"]])
    return env


@pytest.mark.parametrize("name", VARIANTS)
def test_a_pod_starts_with_valid_settings_and_probes_where_the_bot_serves_them(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = variant(name)
    for var in settings_names():
        monkeypatch.delenv(var, raising=False)
    for var, value in pod_env(manifests).items():
        monkeypatch.setenv(var, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.batchai_backend == "azure" and settings.slack_configured
    assert settings.slack_mode == "socket"  # dials out: no ingress needed
    assert settings.probes_apart and settings.probe_host == "0.0.0.0"
    bot = container(manifests)
    ports = {p["name"]: p["containerPort"] for p in bot["ports"]}
    assert ports == {"probes": settings.probe_port}
    routes = {
        r.resource.canonical
        for r in create_probe_app(checks={}, role=lambda: "leader").router.routes()
        if r.resource is not None
    }
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = bot[probe]["httpGet"]
        assert get["path"] == path and path in routes
        assert ports[get["port"]] == settings.probe_port
    service = one(manifests, "Service")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ports and port["port"] == settings.probe_port
    mounts = {m["mountPath"]: m["name"] for m in bot["volumeMounts"]}
    assert settings.batchai_data_dir.parent.as_posix() in mounts  # a folder in a volume
    assert "/tmp" in mounts and pod_env(manifests)["MPLCONFIGDIR"].startswith("/tmp/")
    if name == "postgres":
        assert settings.db_url.startswith("postgresql+asyncpg://")
    else:
        assert settings.db_url.startswith("sqlite+aiosqlite:///")


@pytest.mark.parametrize("name", VARIANTS)
def test_labels_selectors_and_references_match(name: str) -> None:
    manifests = variant(name)
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(one(manifests, "Service")["spec"]["selector"])
    policy = one(manifests, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"])
    ports = {p["name"] for p in container(manifests)["ports"]}
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == ports
    for spread in pod["spec"].get("topologySpreadConstraints", []):
        assert selects(spread["labelSelector"]["matchLabels"])
    assert pod["spec"]["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert {m["name"] for m in container(manifests)["volumeMounts"]} == set(volumes)
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in volumes.values()
        if "persistentVolumeClaim" in v
    }
    assert claims == {m.name for m in manifests if m.kind == "PersistentVolumeClaim"}
    if name == "postgres":
        budget = one(manifests, "PodDisruptionBudget")["spec"]
        assert selects(budget["selector"]["matchLabels"])
        assert 0 < budget["minAvailable"] < deployment["spec"]["replicas"]


def test_sqlite_runs_one_bot_and_postgres_two() -> None:
    sqlite = one(variant("sqlite"), "Deployment")["spec"]
    assert sqlite["replicas"] == 1 and sqlite["strategy"]["type"] == "Recreate"
    postgres = one(variant("postgres"), "Deployment")["spec"]
    assert postgres["replicas"] == 2
    assert postgres["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert "DATABASE_URL" in {e["name"] for e in container(variant("postgres"))["env"]}
    assert "DATABASE_URL" not in {e["name"] for e in container(variant("sqlite"))["env"]}


@pytest.mark.parametrize("name", VARIANTS)
def test_the_pod_is_locked_down_and_sized(name: str) -> None:
    manifests = variant(name)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 10000
    assert pod["automountServiceAccountToken"] is False
    bot = container(manifests)
    context = bot["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert set(bot["resources"]["requests"]) == set(bot["resources"]["limits"]) == {"cpu", "memory"}


def test_the_readme_commands_set_every_variable_the_templates_name() -> None:
    """README, Deploy / Kubernetes: its exports plus deploy/azure/bot-env.sh (the template's
    outputs and the storage key) fill every placeholder of the sqlite variant; the postgres one
    needs DATABASE_URL, which the text after the commands asks for."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Kubernetes\n") : readme.index("### Azure template\n")]
    commands = section[section.index("```sh\n") : section.index("```\n\n")]
    assert 'eval "$(deploy/azure/bot-env.sh' in commands
    exported = set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", commands))
    template = json.loads((ROOT / "deploy" / "azure" / "azuredeploy.json").read_text())
    from_bot_env = set(template["outputs"]) | {"AZURE_STORAGE_KEY", "BATCHAI_BACKEND"}
    for name in VARIANTS:
        text = "".join(
            p.read_text()
            for p in [K8S / "common" / "config.yaml.in", K8S / name / "secret.yaml.in"]
        )
        needed = set(PLACEHOLDER.findall(text)) - exported - from_bot_env
        assert needed == ({"DATABASE_URL"} if name == "postgres" else set()), name
    assert "export `DATABASE_URL` too" in section
    for path in re.findall(r"deploy/k8s/[\w/.]+", commands):
        assert (ROOT / path).exists(), path
