"""The fake ARM server's resources: scale sets, their instances, run commands, operations."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fakes.arm.clock import iso, now
from tests.fakes.arm.node import Script, kill_script, kill_unit, killpg

SUBSCRIPTION = "00000000-0000-4000-8000-0000000000aa"
RESOURCE_GROUP = "batchai-rg"
LOCATION = "eastus"
TOKEN = "fake-arm-token-7d1c"
COMPUTE_API = "2026-04-01"
API_VERSIONS = {
    "compute": COMPUTE_API,
    "skus": "2021-07-01",
    "nics": "2018-10-01",
    "network": "2026-03-01",
}
MAX_RUN_COMMANDS = 25


def base36(n: int) -> str:
    """An instance id as the computer-name suffix Azure gives it: 6 base-36 digits."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out.rjust(6, "0")


def status(
    code: str, display: str, *, level: str = "Info", message: str | None = None
) -> dict[str, Any]:
    """An InstanceViewStatus as ARM writes it."""
    return {
        "code": code,
        "level": level,
        "displayStatus": display,
        "message": message,
        "time": iso(now()),
    }


class ArmError(Exception):
    """An ARM error answer: `{"error": {"code", "message"}}`."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    status: int


@dataclass
class Fault:
    remaining: int
    status: int
    retry_after: float | None
    match: str | None
    method: str | None
    code: str | None
    message: str | None


@dataclass
class Delay:
    remaining: int
    seconds: float
    match: str | None
    method: str | None


@dataclass
class RunCommand:
    name: str
    location: str
    tags: dict[str, str]
    properties: dict[str, Any]  # as stored: protected parameters included
    provisioning_state: str = "Creating"
    script: Script = field(default_factory=Script)
    runs: int = 0


@dataclass
class Extension:
    name: str
    publisher: str
    type: str
    version: str
    status: dict[str, Any]
    script: Script | None = None


@dataclass
class Instance:
    id: str
    scale_set: str
    computer_name: str
    ip: str
    dir: Path
    vm_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: datetime = field(default_factory=now)
    state: str = "creating"  # creating | succeeded | failed | deleting
    power: str = "starting"  # starting | running | deallocated
    model_version: int = 0
    polls: int = 0
    poked: asyncio.Event = field(default_factory=asyncio.Event)
    booted: asyncio.Event = field(default_factory=asyncio.Event)
    provisioned: asyncio.Event = field(default_factory=asyncio.Event)
    extensions: list[Extension] = field(default_factory=list)
    run_commands: dict[str, RunCommand] = field(default_factory=dict)
    action: Script | None = None
    scripts: list[Script] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    failure: str | None = None

    def poke(self) -> None:
        self.polls += 1
        self.poked.set()

    def kill(self) -> None:
        """The VM is gone: everything running on it dies."""
        self.state = "deleting"
        self.halt()

    def halt(self) -> None:
        """Its scripts, their process groups, its systemd units and its containers die."""
        if self.task is not None:
            self.task.cancel()
        for script in self.scripts:
            kill_script(script, leftovers=True)
        for rc in self.run_commands.values():
            kill_script(rc.script)
        for pidfile in (self.dir / "run" / "fake-systemd").glob("*.pgid"):
            kill_unit(pidfile)
        for pidfile in (self.dir / "run" / "fake-docker").glob("*.pgid"):
            with contextlib.suppress(ValueError, OSError):
                killpg(int(pidfile.read_text()))


@dataclass
class ScaleSet:
    name: str
    resource_group: str
    model: dict[str, Any]  # the stored request (secrets included, as ARM holds them)
    unique_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: datetime = field(default_factory=now)
    provisioning_state: str = "Creating"
    instances: dict[str, Instance] = field(default_factory=dict)
    next_id: int = 0
    model_version: int = 0
    operation: Operation | None = None
    sub: str = SUBSCRIPTION

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.sub}/resourceGroups/{self.resource_group}/providers/"
            f"Microsoft.Compute/virtualMachineScaleSets/{self.name}"
        )

    @property
    def sku(self) -> str:
        return str(self.model.get("sku", {}).get("name", ""))

    @property
    def profile(self) -> dict[str, Any]:
        props: dict[str, Any] = self.model.setdefault("properties", {})
        profile: dict[str, Any] = props.setdefault("virtualMachineProfile", {})
        return profile

    @property
    def spot(self) -> bool:
        return str(self.profile.get("priority", "Regular")).lower() in ("spot", "low")

    def poke(self) -> None:
        for inst in self.instances.values():
            inst.poke()

    def view(self) -> dict[str, Any]:
        """The scale set as GET returns it: no admin password, no protected settings."""
        body = copy.deepcopy(self.model)
        props = body.setdefault("properties", {})
        profile = props.setdefault("virtualMachineProfile", {})
        os_profile = profile.get("osProfile")
        if isinstance(os_profile, dict):
            os_profile.pop("adminPassword", None)
            os_profile.setdefault("secrets", [])
        for ext in profile.get("extensionProfile", {}).get("extensions", []) or []:
            ext.get("properties", {}).pop("protectedSettings", None)
            ext.get("properties", {}).pop("protectedSettingsFromKeyVault", None)
            ext["properties"]["provisioningState"] = self.provisioning_state
        body["sku"] = {**body.get("sku", {}), "capacity": len(self.instances)}
        props["provisioningState"] = self.provisioning_state
        props["uniqueId"] = self.unique_id
        props["timeCreated"] = iso(self.created)
        props.setdefault("orchestrationMode", "Uniform")
        props.setdefault("overprovision", True)
        props.setdefault("singlePlacementGroup", True)
        return {
            "name": self.name,
            "id": self.id,
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            **body,
        }


@dataclass
class Operation:
    id: str
    polls_needed: int
    is_done: Callable[[], bool]
    finish: Callable[[], dict[str, Any] | None]  # -> an error, or None when it succeeded
    result: Callable[[], dict[str, Any] | None] = lambda: None
    poke: Callable[[], None] = lambda: None
    started: datetime = field(default_factory=now)
    ended: datetime | None = None
    polls: int = 0
    status: str = "InProgress"
    error: dict[str, Any] | None = None


DISPLAY = {
    "creating": "Creating",
    "succeeded": "Provisioning succeeded",
    "failed": "Provisioning failed",
    "deleting": "Deleting",
}
PROVISIONING = {
    "creating": "Creating",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "deleting": "Deleting",
}
EXEC_MESSAGE = {
    "Pending": "",
    "Running": "Execution in progress",
    "Succeeded": "Execution completed",
    "Failed": "Execution completed",
    "TimedOut": "Execution timed out",
    "Canceled": "Execution was canceled",
}


def request_ids() -> dict[str, str]:
    rid = str(uuid.uuid4())
    return {"x-ms-request-id": rid, "x-ms-correlation-request-id": rid}


def ordered(ss: ScaleSet) -> list[Instance]:
    return [ss.instances[k] for k in sorted(ss.instances, key=int)]


def nic_config(ss: ScaleSet) -> dict[str, str]:
    confs = ss.profile.get("networkProfile", {}).get("networkInterfaceConfigurations") or [{}]
    conf = next((c for c in confs if c.get("properties", {}).get("primary")), confs[0])
    ipconfs = conf.get("properties", {}).get("ipConfigurations") or [{}]
    return {
        "name": str(conf.get("name") or f"{ss.name}-nic"),
        "ipconfig": str(ipconfs[0].get("name") or "ipconfig"),
        "subnet": str(ipconfs[0].get("properties", {}).get("subnet", {}).get("id", "")),
    }


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
