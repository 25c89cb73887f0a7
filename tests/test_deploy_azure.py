"""deploy/azure/azuredeploy.json, evaluated as Resource Manager would for one resource group
(its expressions: parameters, variables, format, resourceId, reference, guid…): the resources the
README's Azure setup lists, wired to each other (the subnet goes out through the NAT gateway, the
role assignments name the identity and their scopes, each share sits in the storage account,
dependsOn covers every reference), and outputs that are the bot's settings."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import Settings

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "azure" / "azuredeploy.json"
PARAMETERS = ROOT / "deploy" / "azure" / "azuredeploy.parameters.json"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"
TENANT = "00000000-0000-0000-0000-0000000000aa"
GROUP = "batchai-rg"
GROUP_ID = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}"
# Built-in role definition ids (the same in every tenant).
VIRTUAL_MACHINE_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
# Outputs that are no setting of the bot, and what they are for.
OTHER_OUTPUTS = {
    "AZURE_CLIENT_ID": "azure-identity: which managed identity to sign in as",
    "AZURE_TENANT_ID": "azure-identity: the tenant (workload identity, a service principal)",
    "NAT_PUBLIC_IP": "the nodes' outbound address, for allow-lists elsewhere",
}

TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(-?\d+)|([A-Za-z_][\w]*)|(.))")


class Arm:
    """A small evaluator of Resource Manager template expressions, enough for this template:
    what it cannot evaluate is an error, so a typo in a name fails the test."""

    def __init__(self, template: dict[str, Any], parameters: Mapping[str, Any]) -> None:
        self.template = template
        self.location = "eastus"
        self.copy_index: dict[str, int] = {}
        self.parameters: dict[str, Any] = {}
        for name, spec in template["parameters"].items():
            if name in parameters:
                self.parameters[name] = parameters[name]
            else:
                assert "defaultValue" in spec, f"parameter {name} has no default"
                self.parameters[name] = self.value(spec["defaultValue"])
            allowed = spec.get("allowedValues")
            assert allowed is None or self.parameters[name] in allowed, name
        self.variables = {k: self.value(v) for k, v in template.get("variables", {}).items()}

    def value(self, node: Any) -> Any:
        """A template value with every expression in it evaluated (property copy loops too)."""
        if isinstance(node, str):
            if node.startswith("[") and not node.startswith("[[") and node.endswith("]"):
                return self.expression(node[1:-1])
            return node
        if isinstance(node, list):
            return [self.value(v) for v in node]
        if isinstance(node, dict):
            out = {k: self.value(v) for k, v in node.items() if k != "copy"}
            for loop in node.get("copy", []):
                items = []
                for i in range(self.value(loop["count"])):
                    self.copy_index[loop["name"]] = i
                    items.append(self.value(loop["input"]))
                out[loop["name"]] = items
            return out
        return node

    def expression(self, text: str) -> Any:
        tokens = [t for t in TOKEN.findall(text) if any(t)]
        result, rest = self._parse(tokens)
        assert not rest, f"left over in [{text}]: {rest}"
        return result

    def _parse(self, tokens: list[tuple[str, str, str, str]]) -> tuple[Any, list[Any]]:
        (string, number, name, punct), rest = tokens[0], tokens[1:]
        if string:
            value: Any = string[1:-1].replace("''", "'")
        elif number:
            value = int(number)
        elif name in ("true", "false"):
            value = name == "true"
        elif name:
            assert rest and rest[0][3] == "(", f"{name} is no function call"
            rest, args = rest[1:], []
            while rest[0][3] != ")":
                arg, rest = self._parse(rest)
                args.append(arg)
                if rest[0][3] == ",":
                    rest = rest[1:]
            rest = rest[1:]
            value = self.call(name, args)
        else:
            raise AssertionError(f"unexpected {punct!r}")
        while rest and rest[0][3] in (".", "["):
            if rest[0][3] == ".":
                value, rest = value[rest[1][2]], rest[2:]
            else:
                index, rest = self._parse(rest[1:])
                assert rest[0][3] == "]"
                value, rest = value[index], rest[1:]
        return value, rest

    def call(self, name: str, args: list[Any]) -> Any:
        functions: dict[str, Callable[..., Any]] = {
            "parameters": lambda n: self.parameters[n],
            "variables": lambda n: self.variables[n],
            "format": lambda f, *a: re.sub(r"\{(\d+)\}", lambda m: str(a[int(m[1])]), f),
            "concat": lambda *a: "".join(map(str, a)),
            "resourceGroup": lambda: {"id": GROUP_ID, "name": GROUP, "location": self.location},
            "subscription": lambda: {"subscriptionId": SUBSCRIPTION, "tenantId": TENANT},
            "resourceId": lambda t, *names: resource_id(t, *names),
            "subscriptionResourceId": lambda t, *names: (
                f"/subscriptions/{SUBSCRIPTION}/providers/{t}/{'/'.join(names)}"
            ),
            "reference": lambda rid, *_: {
                "principalId": f"principal-of:{rid}",
                "clientId": f"client-of:{rid}",
                "ipAddress": "203.0.113.7",
            },
            "guid": lambda *a: str(uuid.uuid5(uuid.NAMESPACE_URL, "|".join(a))),
            "uniqueString": lambda *a: hashlib.sha256("|".join(a).encode()).hexdigest()[:13],
            "not": lambda a: not a,
            "empty": lambda a: len(a) == 0,
            "length": len,
            "copyIndex": lambda n: self.copy_index[n],
        }
        assert name in functions, f"no function {name}() in this evaluator"
        return functions[name](*args)


def resource_id(rtype: str, *names: str) -> str:
    """/subscriptions/…/resourceGroups/…/providers/NS/type/name[/child/name…]"""
    namespace, *types = rtype.split("/")
    assert len(types) == len(names), f"{rtype} needs {len(types)} names, got {names}"
    path = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
    return f"{GROUP_ID}/providers/{namespace}/{path}"


class Deployment:
    """The template evaluated with a parameter set: each deployed resource by its id."""

    def __init__(self, parameters: Mapping[str, Any] | None = None) -> None:
        self.template = json.loads(TEMPLATE.read_text())
        if parameters is None:
            parameters = {k: v["value"] for k, v in parameter_file()["parameters"].items()}
        self.arm = Arm(self.template, parameters)
        self.resources: dict[str, dict[str, Any]] = {}
        for raw in self.template["resources"]:
            if not self.arm.value(raw.get("condition", True)):
                continue
            r = self.arm.value(raw)
            rid = resource_id(r["type"], *r["name"].split("/"))
            if "scope" in r:  # an extension resource: on the resource its scope names
                namespace, rtype, name = r["scope"].split("/", 2)
                rid = (
                    resource_id(f"{namespace}/{rtype}", name)
                    + f"/providers/{r['type']}/{r['name']}"
                )
            assert rid not in self.resources, f"{rid} twice"
            self.resources[rid] = r
        self.outputs = {k: self.arm.value(v["value"]) for k, v in self.template["outputs"].items()}

    def of_type(self, rtype: str) -> list[tuple[str, dict[str, Any]]]:
        return [(rid, r) for rid, r in self.resources.items() if r["type"] == rtype]

    def one(self, rtype: str) -> tuple[str, dict[str, Any]]:
        found = self.of_type(rtype)
        assert len(found) == 1, f"expected one {rtype}, found {len(found)}"
        return found[0]


def parameter_file() -> dict[str, Any]:
    return json.loads(PARAMETERS.read_text())


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)


@pytest.fixture(scope="module")
def deployed() -> Deployment:
    return Deployment()


def test_the_resources_the_readme_lists_are_created(deployed: Deployment) -> None:
    kinds = sorted(r["type"] for r in deployed.resources.values())
    assert kinds == sorted(
        [
            "Microsoft.ManagedIdentity/userAssignedIdentities",
            "Microsoft.Authorization/roleAssignments",
            "Microsoft.Authorization/roleAssignments",
            "Microsoft.Network/publicIPAddresses",
            "Microsoft.Network/natGateways",
            "Microsoft.Network/networkSecurityGroups",
            "Microsoft.Network/virtualNetworks",
            "Microsoft.Storage/storageAccounts",
            "Microsoft.Storage/storageAccounts/fileServices",
            "Microsoft.Storage/storageAccounts/fileServices/shares",
            "Microsoft.Storage/storageAccounts/fileServices/shares",
        ]
    )


def test_the_subnet_goes_out_through_the_nat_gateway_and_its_public_ip(
    deployed: Deployment,
) -> None:
    nat_id, nat = deployed.one("Microsoft.Network/natGateways")
    ip_id, ip = deployed.one("Microsoft.Network/publicIPAddresses")
    assert nat["sku"]["name"] == ip["sku"]["name"] == "Standard"  # a NAT gateway needs both
    assert nat["properties"]["publicIpAddresses"] == [{"id": ip_id}]
    vnet_id, vnet = deployed.one("Microsoft.Network/virtualNetworks")
    (subnet,) = vnet["properties"]["subnets"]
    assert subnet["properties"]["natGateway"] == {"id": nat_id}
    assert subnet["properties"]["defaultOutboundAccess"] is False  # the NAT gateway, nothing else
    nsg_id, _ = deployed.one("Microsoft.Network/networkSecurityGroups")
    assert subnet["properties"]["networkSecurityGroup"] == {"id": nsg_id}
    assert deployed.outputs["AZURE_SUBNET_ID"] == f"{vnet_id}/subnets/{subnet['name']}"


def test_the_role_assignments_give_the_identity_its_two_roles_at_their_scopes(
    deployed: Deployment,
) -> None:
    identity_id, _ = deployed.one("Microsoft.ManagedIdentity/userAssignedIdentities")
    vnet_id, _ = deployed.one("Microsoft.Network/virtualNetworks")
    by_scope = {}
    for rid, r in deployed.of_type("Microsoft.Authorization/roleAssignments"):
        props = r["properties"]
        assert props["principalId"] == f"principal-of:{identity_id}"
        assert props["principalType"] == "ServicePrincipal"
        scope = rid.rsplit("/providers/Microsoft.Authorization/", 1)[0]
        by_scope[scope] = props["roleDefinitionId"].rsplit("/", 1)[-1]
        uuid.UUID(r["name"])  # a role assignment's name must be a GUID
    assert by_scope == {GROUP_ID: VIRTUAL_MACHINE_CONTRIBUTOR, vnet_id: NETWORK_CONTRIBUTOR}


def test_the_storage_account_is_https_only_tls12_without_public_blobs(
    deployed: Deployment,
) -> None:
    _, account = deployed.one("Microsoft.Storage/storageAccounts")
    props = account["properties"]
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is True  # the bot and the nodes use AZURE_STORAGE_KEY
    vnet_id, vnet = deployed.one("Microsoft.Network/virtualNetworks")
    (rule,) = props["networkAcls"]["virtualNetworkRules"]
    assert rule["id"] == deployed.outputs["AZURE_SUBNET_ID"]  # the nodes mount it in any case
    (subnet,) = vnet["properties"]["subnets"]
    assert {"Microsoft.Storage"} == {e["service"] for e in subnet["properties"]["serviceEndpoints"]}
    assert 3 <= len(account["name"]) <= 24 and account["name"].isalnum()
    assert account["name"] == account["name"].lower()


def test_each_share_sits_in_the_storage_account_and_the_outputs_name_them(
    deployed: Deployment,
) -> None:
    account_id, account = deployed.one("Microsoft.Storage/storageAccounts")
    service_id, _ = deployed.one("Microsoft.Storage/storageAccounts/fileServices")
    assert service_id == f"{account_id}/fileServices/default"
    shares = {}
    for rid, share in deployed.of_type("Microsoft.Storage/storageAccounts/fileServices/shares"):
        assert rid.rsplit("/shares/", 1)[0] == service_id
        shares[share["name"].rsplit("/", 1)[-1]] = share
    assert set(shares) == {deployed.outputs["AZURE_SHARE"], deployed.outputs["SHARE_NAME"]}
    assert deployed.outputs["AZURE_SHARE"] != deployed.outputs["SHARE_NAME"]  # jobs never mount it
    assert deployed.outputs["AZURE_STORAGE_ACCOUNT"] == account["name"]
    for share in shares.values():
        assert share["properties"]["enabledProtocols"] == "SMB"


def test_depends_on_names_every_resource_a_resource_refers_to(deployed: Deployment) -> None:
    """Resource Manager deploys in parallel what dependsOn does not order."""
    ids = set(deployed.resources)
    for rid, r in deployed.resources.items():
        depends = set(r.get("dependsOn", []))
        assert depends <= ids, f"{rid} depends on what is not deployed: {depends - ids}"
        referred = set()
        for text in strings({k: v for k, v in r.items() if k != "dependsOn"}):
            for other in ids - {rid}:
                if text.removeprefix("principal-of:").removeprefix("client-of:") == other:
                    referred.add(other)
                elif text.startswith(other + "/") and not rid.startswith(other + "/"):
                    referred.add(other)  # a child of another resource (a subnet of the VNet)
        parent = rid.rsplit("/", 2)[0]
        if parent in ids:  # a child resource (a share of the file service)
            referred.add(parent)
        if "/providers/Microsoft.Authorization/" in rid:  # an extension resource on its scope
            referred.add(rid.split("/providers/Microsoft.Authorization/")[0])
        referred.discard(GROUP_ID)
        assert referred <= depends, f"{rid}: missing dependsOn {sorted(referred - depends)}"


def test_the_outputs_are_what_the_bot_needs_and_it_starts_with_them(
    deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {n.upper() for n in Settings.model_fields}
    assert set(deployed.outputs) <= names | set(OTHER_OUTPUTS), sorted(
        set(deployed.outputs) - names - set(OTHER_OUTPUTS)
    )
    for var in names:
        monkeypatch.delenv(var, raising=False)
    for var, value in deployed.outputs.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("BATCHAI_BACKEND", "azure")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "a2V5")  # a secret: `az storage account keys list`
    settings = Settings(_env_file=None)  # type: ignore[call-arg]  # every required one is there
    assert settings.azure_subscription_id == SUBSCRIPTION
    assert settings.azure_resource_group == GROUP
    assert settings.azure_share == deployed.outputs["AZURE_SHARE"]
    for name, out in deployed.template["outputs"].items():  # no secret in the deployment record
        assert "listKeys" not in json.dumps(out) and out["type"] != "secureString", name


def test_kubernetes_config_is_filled_from_the_outputs(deployed: Deployment) -> None:
    text = (ROOT / "deploy" / "k8s" / "common" / "config.yaml.in").read_text()
    wanted = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    assert wanted and wanted <= set(deployed.outputs), sorted(wanted - set(deployed.outputs))


def test_with_an_oidc_issuer_the_identity_trusts_the_kubernetes_service_account() -> None:
    issuer = "https://oidc.example.com/tenant/cluster/"
    defaults = {k: v["value"] for k, v in parameter_file()["parameters"].items()}
    deployed = Deployment({**defaults, "kubernetesOidcIssuer": issuer})
    identity_id, _ = deployed.one("Microsoft.ManagedIdentity/userAssignedIdentities")
    rid, cred = deployed.one(
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials"
    )
    assert rid.startswith(identity_id + "/") and identity_id in cred["dependsOn"]
    account = next(
        d
        for d in yaml.safe_load_all((ROOT / "deploy/k8s/common/config.yaml.in").read_text())
        if d["kind"] == "ServiceAccount"
    )["metadata"]
    assert cred["properties"]["subject"] == (
        f"system:serviceaccount:{account['namespace']}:{account['name']}"
    )
    assert cred["properties"]["issuer"] == issuer


def test_the_parameter_file_sets_only_the_templates_parameters() -> None:
    template = json.loads(TEMPLATE.read_text())
    given = parameter_file()["parameters"]
    assert set(given) <= set(template["parameters"])
    kinds = {"string": str, "int": int, "bool": bool, "array": list, "object": dict}
    for name, spec in given.items():
        assert isinstance(spec["value"], kinds[template["parameters"][name]["type"]]), name


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("variables", "vnetName"), "[format('{0}-vnet', parameters('namPrefix'))]", "namPrefix"),
        (("variables", "subnetName"), "[variable('x')]", "variable"),
    ],
)
def test_the_evaluator_refuses_a_misspelt_name(
    path: tuple[str, str], value: str, error: str
) -> None:
    template = json.loads(TEMPLATE.read_text())
    template[path[0]][path[1]] = value
    with pytest.raises((KeyError, AssertionError), match=error):
        Arm(template, {})


FAKE_AZ = """#!{python}
# The az CLI as bot-env.sh uses it, answering from files (a real subprocess, no Azure).
import sys
from pathlib import Path

here = Path(__file__).parent
args = sys.argv[1:]
with open(here / "calls", "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:3] == ["deployment", "group", "show"] and args[args.index("-n") + 1] == "azuredeploy":
    print((here / "outputs.json").read_text())
elif args[:4] == ["storage", "account", "keys", "list"]:
    print((here / "key").read_text())
else:
    sys.exit(f"ERROR: unexpected az {{args}}")
"""


def run_bot_env(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    return subprocess.run(
        ["sh", str(ROOT / "deploy" / "azure" / "bot-env.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_bot_env_turns_a_deployment_into_the_bots_environment(
    deployed: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    az = tmp_path / "az"
    az.write_text(FAKE_AZ.format(python=sys.executable))
    az.chmod(0o755)
    outputs = {k: {"type": "String", "value": v} for k, v in deployed.outputs.items()}
    outputs["AZURE_SHARE"]["value"] = "it's $(quoted)"  # a value the shell must not run
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    (tmp_path / "key").write_text("c2VjcmV0+a2V5/w==\n")
    done = run_bot_env(tmp_path, GROUP)
    assert done.returncode == 0, done.stderr
    account = deployed.outputs["AZURE_STORAGE_ACCOUNT"]
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"deployment group show -g {GROUP} -n azuredeploy --query properties.outputs -o json",
        f"storage account keys list -g {GROUP} -n {account} --query [0].value -o tsv",
    ]
    shown = subprocess.run(
        ["sh", "-c", done.stdout + "\nenv"], capture_output=True, text=True, check=True, env={}
    ).stdout
    env = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert env["AZURE_STORAGE_KEY"] == "c2VjcmV0+a2V5/w=="
    assert env["AZURE_SHARE"] == "it's $(quoted)"
    for var in {n.upper() for n in Settings.model_fields}:
        monkeypatch.delenv(var, raising=False)
    for var in set(deployed.outputs) | {"BATCHAI_BACKEND", "AZURE_STORAGE_KEY"}:
        monkeypatch.setenv(var, env[var])
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.batchai_backend == "azure"
    assert settings.azure_subnet_id == deployed.outputs["AZURE_SUBNET_ID"]


def test_bot_env_without_a_resource_group_says_how_and_prints_nothing(tmp_path: Path) -> None:
    done = run_bot_env(tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("usage: ") and done.stderr.count("\n") == 1
