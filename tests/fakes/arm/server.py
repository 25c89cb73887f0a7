"""The fake ARM HTTPS server: routing, auth, faults, LROs and the Compute/Network handlers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gzip
import ipaddress
import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.core.credentials import AccessToken

from tests.fakes import gpu
from tests.fakes.arm.catalog import (
    DEFAULT_FAMILY_LIMIT,
    DEFAULT_LIMITS,
    DISALLOWED_ADMIN_NAMES,
    IMAGE_PLANS,
    QUOTA_HELP,
    VMSS_NAME,
    capability,
    catalog,
    image_generation,
    vcpus,
)
from tests.fakes.arm.clock import iso, now
from tests.fakes.arm.images import FakeImages
from tests.fakes.arm.machines import Machines
from tests.fakes.arm.node import (
    SHIM_DIR,
    Script,
    kill_script,
    node_environment,
    run_script,
    tail,
)
from tests.fakes.arm.resources import (
    API_VERSIONS,
    COMPUTE_API,
    DISPLAY,
    EXEC_MESSAGE,
    LOCATION,
    MAX_RUN_COMMANDS,
    PROVISIONING,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    TOKEN,
    ArmError,
    Delay,
    Extension,
    Fault,
    Instance,
    Operation,
    Request,
    RunCommand,
    ScaleSet,
    base36,
    merge,
    nic_config,
    ordered,
    request_ids,
    status,
)
from tests.fakes.tls import serve_tls

_RG = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
_VMSS = _RG + r"/providers/Microsoft\.Compute/virtualMachineScaleSets"
_VM = _VMSS + r"/(?P<vmss>[^/]+)/virtualMachines/(?P<vm>[^/]+)"
_SUBP = r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Compute"


class FakeCredential:
    """An async token credential for the fake: always the same bearer token."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls = 0
        self.closed = False

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class FakeArm:
    """The fake ARM server and its simulated nodes (see the module docstring)."""

    def __init__(
        self,
        node_root: Path | str,
        *,
        subscription: str = SUBSCRIPTION,
        resource_group: str = RESOURCE_GROUP,
        location: str = LOCATION,
        lro_polls: int = 1,
        instance_delay_polls: int = 0,
        instance_delay_seconds: float = 0.0,
        node_env: Mapping[str, str] | None = None,
        page_size: int | None = None,
        lro_retry_after: float | None = None,
    ) -> None:
        self.node_root = Path(node_root).absolute()
        self.subscription = subscription
        self.resource_group = resource_group
        self.location = location
        self.lro_polls = lro_polls
        self.instance_delay_polls = instance_delay_polls
        self.instance_delay_seconds = instance_delay_seconds
        self.node_env = dict(node_env or {})
        self.gpu_rules: list[tuple[str | None, dict[str, Any]]] = []
        self.page_size = page_size
        self.lro_retry_after = lro_retry_after
        self.resource_groups: dict[str, str] = {resource_group.lower(): resource_group}
        self.subnet_id = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
            "Microsoft.Network/virtualNetworks/batchai-vnet/subnets/default"
        )
        self.subnets: dict[str, str] = {self.subnet_id.lower(): "10.0.0.0/16"}
        self.scale_sets: dict[str, ScaleSet] = {}
        self.machines = Machines(subscription)  # standalone VMs (file servers), disks, NICs
        self.limits: dict[str, int] = {k.lower(): v for k, v in DEFAULT_LIMITS.items()}
        self.default_family_limit = DEFAULT_FAMILY_LIMIT
        self.skus: list[dict[str, Any]] = catalog(self.location)
        self.requests: list[Request] = []
        self.operations: dict[str, Operation] = {}
        self._faults: list[Fault] = []
        self._delays: list[Delay] = []
        self._ips = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._blocked: set[asyncio.Task[Any]] = set()  # waiting for polls, not for work
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tmp: Path | None = None
        self.base_url = ""
        self.ca_path = ""
        self.port = 0
        self._routes: list[tuple[str, re.Pattern[str], str, Callable[..., Awaitable[Any]]]] = []
        self._route("GET", _RG, "any", self._get_rg)
        self._route("HEAD", _RG, "any", self._head_rg)
        self._route("GET", _VMSS, "compute", self._list_vmss)
        self._route("PUT", _VMSS + r"/(?P<vmss>[^/]+)", "compute", self._put_vmss)
        self._route("GET", _VMSS + r"/(?P<vmss>[^/]+)", "compute", self._get_vmss)
        self._route("PATCH", _VMSS + r"/(?P<vmss>[^/]+)", "compute", self._patch_vmss)
        self._route("DELETE", _VMSS + r"/(?P<vmss>[^/]+)", "compute", self._delete_vmss)
        self._route("POST", _VMSS + r"/(?P<vmss>[^/]+)/delete", "compute", self._delete_instances)
        self._route("GET", _VMSS + r"/(?P<vmss>[^/]+)/virtualMachines", "compute", self._list_vms)
        self._route("GET", _VMSS + r"/(?P<vmss>[^/]+)/networkInterfaces", "nics", self._list_nics)
        self._route("GET", _VM, "compute", self._get_vm)
        self._route("DELETE", _VM, "compute", self._delete_vm)
        self._route("GET", _VM + "/instanceView", "compute", self._get_instance_view)
        self._route("GET", _VM + "/runCommands", "compute", self._list_rcs)
        self._route("PUT", _VM + r"/runCommands/(?P<rc>[^/]+)", "compute", self._put_rc)
        self._route("GET", _VM + r"/runCommands/(?P<rc>[^/]+)", "compute", self._get_rc)
        self._route("DELETE", _VM + r"/runCommands/(?P<rc>[^/]+)", "compute", self._delete_rc)
        self._route("POST", _VM + "/runCommand", "compute", self._action_rc)
        self._route(
            "GET",
            _RG + r"/providers/Microsoft\.Network/virtualNetworks/(?P<vnet>[^/]+)"
            r"/subnets/(?P<subnet>[^/]+)",
            "network",
            self._get_subnet,
        )
        _STANDALONE = _RG + r"/providers/Microsoft\.Compute/virtualMachines/(?P<name>[^/]+)"
        _NIC = _RG + r"/providers/Microsoft\.Network/networkInterfaces/(?P<name>[^/]+)"
        self._route("PUT", _STANDALONE, "compute", self._put_machine)
        self._route("GET", _STANDALONE, "compute", self._get_machine)
        self._route("DELETE", _STANDALONE, "compute", self._delete_machine)
        self._route("PUT", _NIC, "network", self._put_nic)
        self._route("GET", _NIC, "network", self._get_nic)
        self._route("DELETE", _NIC, "network", self._delete_nic)
        self._route("GET", _SUBP + r"/locations/(?P<loc>[^/]+)/usages", "compute", self._usages)
        self._route("GET", _SUBP + "/skus", "skus", self._list_skus)
        self._route("GET", _SUBP + "/virtualMachineScaleSets", "compute", self._list_vmss)
        self._route(
            "GET", _SUBP + r"/locations/(?P<loc>[^/]+)/operations/(?P<op>[^/]+)", "any", self._op
        )
        self._route(
            "GET",
            _SUBP + r"/locations/(?P<loc>[^/]+)/operationResults/(?P<op>[^/]+)",
            "any",
            self._op_result,
        )
        self.images = FakeImages(self.location)  # marketplace images and their terms
        self.images.register(self._route)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeArm:
        for shim in SHIM_DIR.iterdir():
            shim.chmod(0o755)
        self.node_root.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-arm-"))
        self._runner, self.port, self.ca_path = await serve_tls(
            self._dispatch, self._tmp, "127.0.0.1", "localhost", client_max_size=8 * 1024 * 1024
        )
        self.base_url = f"https://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        self._stopping.set()
        for ss in list(self.scale_sets.values()):
            for inst in list(ss.instances.values()):
                inst.kill()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for ss in list(self.scale_sets.values()):
            for inst in ss.instances.values():
                inst.kill()  # units a cancelled script started at the last moment
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def __aenter__(self) -> FakeArm:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def credential(self) -> FakeCredential:
        return FakeCredential()

    # ------------------------------------------------------------------ testing aids

    def mark(self) -> int:
        return len(self.requests)

    def since(self, mark: int) -> list[Request]:
        return self.requests[mark:]

    def count(self, mark: int = 0, *, method: str | None = None, match: str | None = None) -> int:
        """Requests since `mark` (of `method`, whose path contains `match`)."""
        return sum(
            1
            for r in self.requests[mark:]
            if (method is None or r.method == method.upper())
            and (match is None or match.lower() in r.path.lower())
        )

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        retry_after: float | None = None,
        match: str | None = None,
        code: str | None = None,
        message: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next `n` requests (whose path contains `match`) with an error."""
        self._faults.append(Fault(n, status, retry_after, match, method, code, message))

    def delay_next(
        self, n: int = 1, seconds: float = 30.0, match: str | None = None, method: str | None = None
    ) -> None:
        """Hold the next `n` matching requests for `seconds` before answering them."""
        self._delays.append(Delay(n, seconds, match, method))

    def set_quota(self, name: str, limit: int) -> None:
        """Set a usage limit: "cores", "lowPriorityCores" or a family like "standardNCFamily"."""
        self.limits[name.lower()] = limit

    def restrict_sku(self, name: str, reason: str = "NotAvailableForSubscription") -> None:
        sku = self._sku(name)
        if sku is None:
            raise KeyError(name)
        sku["restrictions"] = [
            {
                "type": "Location",
                "values": [self.location],
                "restrictionInfo": {"locations": [self.location]},
                "reasonCode": reason,
            }
        ]

    def add_resource_group(self, name: str) -> None:
        self.resource_groups[name.lower()] = name

    def unrestrict_sku(self, name: str) -> None:
        sku = self._sku(name)
        if sku is None:
            raise KeyError(name)
        sku["restrictions"] = []

    def add_subnet(self, subnet_id: str, prefix: str = "10.1.0.0/24") -> None:
        """Make a subnet (and its resource group) exist, e.g. in a separate network RG."""
        m = re.fullmatch(
            _RG + r"/providers/Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+",
            subnet_id,
            re.IGNORECASE,
        )
        if m is None:
            raise ValueError(f"not a subnet id: {subnet_id}")
        self.add_resource_group(m["rg"])
        self.subnets[subnet_id.lower()] = prefix

    def node_dir(self, vmss: str, instance_id: str) -> Path:
        return self.node_root / vmss / instance_id

    def give_gpus(self, scale_set: str | None = None, **state: Any) -> None:
        """From now on, new instances of GPU sizes (of `scale_set`, or of any) boot with a fake
        NVIDIA driver in `<node>/bin` (see tests.fakes.gpu.install: mode, count — default the
        SKU's `GPUs` —, name, memory_mib, series). Without a rule a node has no driver."""
        self.gpu_rules.append((scale_set, state))

    def gpu_bin(self, vmss: str, instance_id: str) -> Path:
        """The node's fake driver directory, for tests.fakes.gpu.set_state/queries."""
        return self.node_dir(vmss, instance_id) / "bin"

    def _install_gpus(self, ss: ScaleSet, inst: Instance) -> None:
        sku = self._sku(str(ss.model.get("sku", {}).get("name", "")))
        gpus = int(capability(sku, "GPUs", "0")) if sku is not None else 0
        rule = next((st for name, st in reversed(self.gpu_rules) if name in (None, ss.name)), None)
        if rule is None or gpus == 0:
            return
        gpu.install(inst.dir / "bin", **{"count": gpus, **rule})

    def evict(self, vmss: str, instance_id: str) -> None:
        """Spot eviction as the model's evictionPolicy says: Delete -> the VM is gone;
        Deallocate (Azure's default) -> it stays, deallocated (still counted in quota)."""
        ss = self.scale_sets[vmss]
        if not ss.spot:
            raise ValueError(f"scale set {vmss} is not Spot: Azure does not evict its VMs")
        if str(ss.profile.get("evictionPolicy") or "Deallocate").lower() == "delete":
            ss.instances.pop(instance_id).kill()
            ss.model.setdefault("sku", {})["capacity"] = len(ss.instances)
        else:
            inst = ss.instances[instance_id]
            inst.halt()
            inst.power = "deallocated"

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait until no provisioning or script task runs (tests that inspect the end state);
        an instance that waits to be polled (`instance_delay_polls`) and run commands that wait
        for it to boot do not count. False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while True:
            busy = [
                t
                for t in self._tasks
                if not t.done() and t is not asyncio.current_task() and t not in self._blocked
            ]
            if not busy:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.wait(
                busy,
                timeout=min(0.05, max(0.0, deadline - time.monotonic())),
                return_when=asyncio.FIRST_COMPLETED,
            )

    # ------------------------------------------------------------------ HTTP plumbing

    def _route(
        self, method: str, pattern: str, api: str, handler: Callable[..., Awaitable[Any]]
    ) -> None:
        self._routes.append((method, re.compile(pattern + "/?", re.IGNORECASE), api, handler))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            response = await self._handle(request)
        except ArmError as err:
            response = web.json_response(
                err.body(), status=err.status, headers={**err.headers, **request_ids()}
            )
        if request.method == "HEAD" and response.status >= 400:
            response = web.Response(status=response.status)
        self.requests.append(
            Request(request.method, request.path, dict(request.query), response.status)
        )
        return response

    def _take(self, items: list[Any], request: web.Request) -> Any:
        for item in items:
            if item.match is not None and item.match.lower() not in request.path.lower():
                continue
            if item.method is not None and item.method.upper() != request.method:
                continue
            item.remaining -= 1
            if item.remaining <= 0:
                items.remove(item)
            return item
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            missing = "Authorization" not in request.headers
            raise ArmError(
                401,
                "AuthenticationFailed" if missing else "InvalidAuthenticationToken",
                "Authentication failed. The 'Authorization' header is missing."
                if missing
                else "The access token is invalid.",
                {
                    "WWW-Authenticate": 'Bearer authorization_uri="https://login.windows.net/", '
                    'error="invalid_token", error_description="The authentication failed."'
                },
            )
        delay = self._take(self._delays, request)
        if delay is not None:
            with contextlib.suppress(TimeoutError):  # stop() ends the wait
                await asyncio.wait_for(self._stopping.wait(), delay.seconds)
        fault = self._take(self._faults, request)
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            default = {429: "TooManyRequests", 503: "ServiceUnavailable", 409: "Conflict"}
            raise ArmError(
                fault.status,
                fault.code or default.get(fault.status, "InternalServerError"),
                fault.message or "Injected fault from the fake ARM server.",
                headers,
            )
        for method, pattern, api, handler in self._routes:
            m = pattern.fullmatch(request.path)
            if m is None or method != request.method:
                continue
            self._check_api_version(request, api)
            params = m.groupdict()
            if "sub" in params and params.pop("sub").lower() != self.subscription.lower():
                raise ArmError(
                    404,
                    "SubscriptionNotFound",
                    f"The subscription '{m['sub']}' could not be found.",
                )
            if "rg" in params and params["rg"].lower() not in self.resource_groups:
                raise ArmError(
                    404,
                    "ResourceGroupNotFound",
                    f"Resource group '{params['rg']}' could not be found.",
                )
            response: web.StreamResponse = await handler(request, **params)
            return response
        raise ArmError(
            404,
            "InvalidResourceType" if request.method == "GET" else "NotFound",
            f"The fake ARM server has no route for {request.method} {request.path}.",
        )

    def _check_api_version(self, request: web.Request, api: str) -> None:
        version = request.query.get("api-version")
        if version is None:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if api != "any" and version != API_VERSIONS[api]:
            raise ArmError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions are "
                f"'{API_VERSIONS[api]}'.",
            )

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArmError(
                400, "InvalidRequestContent", f"The request content was invalid: {err}"
            ) from None
        if not isinstance(body, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content must be an object.")
        return dict(body)

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.StreamResponse:
        """A list answer; with `page_size`, pages linked by `nextLink` ($skiptoken), as ARM."""
        if self.page_size is None:
            return web.json_response({"value": items}, headers=request_ids())
        start = int(request.query.get("$skiptoken", "0") or 0)
        body: dict[str, Any] = {"value": items[start : start + self.page_size]}
        if start + self.page_size < len(items):
            query = {**request.query, "$skiptoken": str(start + self.page_size)}
            body["nextLink"] = str(request.url.with_scheme("https").with_query(query))
        return web.json_response(body, headers=request_ids())

    def _lro_headers(self, op: Operation, *, location: bool) -> dict[str, str]:
        base = f"{self.base_url}/subscriptions/{self.subscription}/providers/Microsoft.Compute/"
        base += f"locations/{self.location}"
        headers = {
            "Azure-AsyncOperation": f"{base}/operations/{op.id}?api-version={COMPUTE_API}",
            **request_ids(),
        }
        if self.lro_retry_after is not None:
            headers["Retry-After"] = f"{self.lro_retry_after:g}"
        if location:
            headers["Location"] = (
                f"{base}/operationResults/{op.id}?monitor=true&api-version={COMPUTE_API}"
            )
        return headers

    def _operation(
        self,
        is_done: Callable[[], bool],
        finish: Callable[[], dict[str, Any] | None],
        *,
        result: Callable[[], dict[str, Any] | None] = lambda: None,
        poke: Callable[[], None] = lambda: None,
    ) -> Operation:
        op = Operation(str(uuid.uuid4()), self.lro_polls, is_done, finish, result, poke)
        self.operations[op.id] = op
        self._advance(op, poll=False)
        return op

    def _advance(self, op: Operation | None, *, poll: bool = True) -> None:
        if op is None or op.status != "InProgress":
            return
        if poll:
            op.polls += 1
            op.poke()
        if op.polls >= op.polls_needed and op.is_done():
            op.error = op.finish()
            op.status = "Failed" if op.error else "Succeeded"
            op.ended = now()

    async def _op(self, request: web.Request, loc: str, op: str) -> web.StreamResponse:
        found = self.operations.get(op)
        if found is None:
            raise ArmError(404, "NotFound", f"The operation '{op}' was not found.")
        self._advance(found)
        body: dict[str, Any] = {
            "startTime": iso(found.started),
            "status": found.status,
            "name": found.id,
        }
        if found.ended:
            body["endTime"] = iso(found.ended)
        if found.error:
            body["error"] = found.error
        headers = request_ids()
        if self.lro_retry_after is not None and found.status == "InProgress":
            headers["Retry-After"] = f"{self.lro_retry_after:g}"
        return web.json_response(body, headers=headers)

    async def _op_result(self, request: web.Request, loc: str, op: str) -> web.StreamResponse:
        found = self.operations.get(op)
        if found is None:
            raise ArmError(404, "NotFound", f"The operation '{op}' was not found.")
        self._advance(found)
        if found.status == "InProgress":
            return web.Response(status=202, headers=self._lro_headers(found, location=True))
        if found.error:
            raise ArmError(409, found.error["code"], found.error["message"])
        result = found.result()
        if result is None:
            return web.Response(status=204, headers=request_ids())
        return web.json_response(result, headers=request_ids())

    # ------------------------------------------------------------------ resource groups, network

    async def _get_rg(self, request: web.Request, rg: str) -> web.StreamResponse:
        name = self.resource_groups[rg.lower()]
        return web.json_response(
            {
                "id": f"/subscriptions/{self.subscription}/resourceGroups/{name}",
                "name": name,
                "type": "Microsoft.Resources/resourceGroups",
                "location": self.location,
                "properties": {"provisioningState": "Succeeded"},
            }
        )

    async def _head_rg(self, request: web.Request, rg: str) -> web.StreamResponse:
        return web.Response(status=204)

    async def _get_subnet(
        self, request: web.Request, rg: str, vnet: str, subnet: str
    ) -> web.StreamResponse:
        sid = (
            f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/"
            f"Microsoft.Network/virtualNetworks/{vnet}/subnets/{subnet}"
        )
        prefix = self.subnets.get(sid.lower())
        if prefix is None:
            raise ArmError(
                404,
                "NotFound",
                f"Resource {sid} not found.",
            )
        return web.json_response(
            {
                "name": subnet,
                "id": sid,
                "etag": f'W/"{uuid.uuid5(uuid.NAMESPACE_URL, sid)}"',
                "type": "Microsoft.Network/virtualNetworks/subnets",
                "properties": {
                    "provisioningState": "Succeeded",
                    "addressPrefix": prefix,
                    "privateEndpointNetworkPolicies": "Disabled",
                    "privateLinkServiceNetworkPolicies": "Enabled",
                },
            }
        )

    async def _list_nics(self, request: web.Request, rg: str, vmss: str) -> web.StreamResponse:
        ss = self._scale_set(rg, vmss)
        nics = []
        for inst in ordered(ss):
            conf = nic_config(ss)
            vm_id = f"{ss.id}/virtualMachines/{inst.id}"
            nic_id = f"{vm_id}/networkInterfaces/{conf['name']}"
            ipconf = conf["ipconfig"]
            nics.append(
                {
                    "name": conf["name"],
                    "id": nic_id,
                    "etag": f'W/"{inst.vm_id}"',
                    "properties": {
                        "provisioningState": "Succeeded",
                        "resourceGuid": inst.vm_id,
                        "ipConfigurations": [
                            {
                                "name": ipconf,
                                "id": f"{nic_id}/ipConfigurations/{ipconf}",
                                "etag": f'W/"{inst.vm_id}"',
                                "properties": {
                                    "provisioningState": "Succeeded",
                                    "privateIPAddress": inst.ip,
                                    "privateIPAllocationMethod": "Dynamic",
                                    "subnet": {"id": conf["subnet"]},
                                    "primary": True,
                                    "privateIPAddressVersion": "IPv4",
                                },
                            }
                        ],
                        "dnsSettings": {"dnsServers": [], "appliedDnsServers": []},
                        "macAddress": "00-0D-3A-"
                        + inst.vm_id[:8].upper()[:2]
                        + "-00-0"
                        + inst.id[-1],
                        "enableAcceleratedNetworking": False,
                        "enableIPForwarding": False,
                        "primary": True,
                        "virtualMachine": {"id": vm_id},
                    },
                }
            )
        return self._page(request, nics)

    # ------------------------------------------------------------------ standalone VMs, NICs

    async def _put_machine(self, request: web.Request, rg: str, name: str) -> web.StreamResponse:
        body = await self._json(request)
        size = str(((body.get("properties") or {}).get("hardwareProfile") or {}).get("vmSize"))
        vm = self.machines.put_vm(self.resource_groups[rg.lower()], name, body, self._sku(size))
        vm.state = "Creating"

        def finish() -> None:
            vm.state = "Succeeded"

        op = self._operation(lambda: True, finish)
        return web.json_response(
            vm.view(self.subscription), status=201, headers=self._lro_headers(op, location=False)
        )

    async def _get_machine(self, request: web.Request, rg: str, name: str) -> web.StreamResponse:
        vm = self.machines.vms.get(name)
        if vm is None:
            raise ArmError(404, "ResourceNotFound", f"The Resource '{name}' was not found.")
        return web.json_response(vm.view(self.subscription), headers=request_ids())

    async def _delete_machine(self, request: web.Request, rg: str, name: str) -> web.StreamResponse:
        if name not in self.machines.vms:
            return web.Response(status=204, headers=request_ids())
        self.machines.vms[name].state = "Deleting"
        op = self._operation(lambda: True, lambda: self.machines.delete_vm(name))
        return web.Response(status=202, headers=self._lro_headers(op, location=True))

    async def _put_nic(self, request: web.Request, rg: str, name: str) -> web.StreamResponse:
        body = await self._json(request)
        nic = self.machines.put_nic(rg, name, body, self.subnets)
        return web.json_response(nic, status=201, headers=request_ids())

    async def _get_nic(self, request: web.Request, rg: str, name: str) -> web.StreamResponse:
        nic = self.machines.nics.get(name)
        if nic is None:
            raise ArmError(404, "NotFound", f"Resource {name} not found.")
        return web.json_response(nic, headers=request_ids())

    async def _delete_nic(self, request: web.Request, rg: str, name: str) -> web.StreamResponse:
        self.machines.nics.pop(name, None)
        return web.Response(status=200, headers=request_ids())

    # ------------------------------------------------------------------ SKUs and usage

    def _sku(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.skus if str(s["name"]).lower() == name.lower()), None)

    async def _list_skus(self, request: web.Request) -> web.StreamResponse:
        flt = request.query.get("$filter")
        skus = self.skus
        if flt:
            m = re.fullmatch(r"\s*location\s+eq\s+'([^']*)'\s*", flt)
            if m is None:
                raise ArmError(
                    400,
                    "InvalidFilter",
                    "Only 'location eq <location>' is supported as a filter.",
                )
            skus = [s for s in skus if m[1].lower() in [x.lower() for x in s["locations"]]]
        return web.json_response({"value": skus})

    def _usage(self, change: tuple[str, str, int, bool] | None = None) -> dict[str, int]:
        """Current usage per quota name (lower case); with `change` = (scale set, size,
        capacity, spot), the usage once that scale set looks like that."""
        sets = {ss.name: (ss.sku, len(ss.instances), ss.spot) for ss in self.scale_sets.values()}
        if change is not None:
            sets[change[0]] = change[1:]
        used: dict[str, int] = {}
        for size, n, spot in sets.values():
            sku = self._sku(size)
            cores = vcpus(sku) * n if sku else 0
            used["virtualmachinescalesets"] = used.get("virtualmachinescalesets", 0) + 1
            used["virtualmachines"] = used.get("virtualmachines", 0) + n
            if spot:
                used["lowprioritycores"] = used.get("lowprioritycores", 0) + cores
            else:
                used["cores"] = used.get("cores", 0) + cores
                if sku:
                    fam = str(sku["family"]).lower()
                    used[fam] = used.get(fam, 0) + cores
        return used

    def _limit(self, name: str) -> int:
        return self.limits.get(name.lower(), self.default_family_limit)

    async def _usages(self, request: web.Request, loc: str) -> web.StreamResponse:
        used = self._usage()
        names = {
            "cores": "Total Regional vCPUs",
            "virtualMachines": "Virtual Machines",
            "virtualMachineScaleSets": "Virtual Machine Scale Sets",
            "lowPriorityCores": "Total Regional Low-priority vCPUs",
        }
        for fam in sorted({str(s["family"]) for s in self.skus}):
            middle = re.sub(r"(?i)^standard|family$", "", fam)
            names[fam] = f"Standard {middle} Family vCPUs"
        value = [
            {
                "unit": "Count",
                "currentValue": used.get(name.lower(), 0) if loc.lower() == self.location else 0,
                "limit": self._limit(name),
                "name": {"value": name, "localizedValue": localized},
            }
            for name, localized in names.items()
        ]
        return web.json_response({"value": value})

    def _check_sku(self, size: str) -> dict[str, Any]:
        sku = self._sku(size)
        if sku is None or sku.get("restrictions"):
            raise ArmError(
                409,
                "SkuNotAvailable",
                f"The requested VM size for resource 'Following SKUs have failed for Capacity "
                f"Restrictions: {size}' is currently not available in location "
                f"'{self.location}'. Please try another size or deploy to a different location "
                "or different zone. See https://aka.ms/azureskunotavailable for details.",
            )
        return sku

    def _check_quota(self, name: str, sku: Mapping[str, Any], capacity: int, spot: bool) -> None:
        """409 OperationNotAllowed when scale set `name` with this size, capacity and priority
        would need more vCPUs than a quota allows (the SKU's family and regional cores, or
        low-priority cores for Spot)."""
        before = self._usage()
        after = self._usage((name, str(sku["name"]), capacity, spot))
        family = str(sku["family"])
        checks = (
            [("lowPriorityCores", "Low Priority Cores")]
            if spot
            else [(family, f"{family} Cores"), ("cores", "Total Regional Cores")]
        )
        for quota, what in checks:
            current, limit = before.get(quota.lower(), 0), self._limit(quota)
            need = after.get(quota.lower(), 0) - current
            if need > 0 and current + need > limit:
                raise ArmError(
                    409,
                    "OperationNotAllowed",
                    f"Operation could not be completed as it results in exceeding approved "
                    f"{what} quota. Additional details - Deployment Model: Resource Manager, "
                    f"Location: {self.location}, Current Limit: {limit}, Current Usage: "
                    f"{current}, Additional Required: {need}, (Minimum) New Limit Required: "
                    f"{current + need}. {QUOTA_HELP}",
                )

    # ------------------------------------------------------------------ scale sets

    def _scale_set(self, rg: str, name: str) -> ScaleSet:
        ss = self.scale_sets.get(name)
        if ss is None or ss.resource_group.lower() != rg.lower():
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{name}' under resource "
                f"group '{rg}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        return ss

    async def _list_vmss(self, request: web.Request, rg: str | None = None) -> web.StreamResponse:
        value = []
        for ss in self.scale_sets.values():
            if rg is None or ss.resource_group.lower() == rg.lower():
                self._advance(ss.operation)
                value.append(ss.view())
        return self._page(request, value)

    async def _get_vmss(self, request: web.Request, rg: str, vmss: str) -> web.StreamResponse:
        ss = self._scale_set(rg, vmss)
        self._advance(ss.operation)
        return web.json_response(ss.view(), headers=request_ids())

    def _validate_model(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        location = str(body.get("location", ""))
        if location.lower().replace(" ", "") != self.location:
            raise ArmError(
                400,
                "LocationNotAvailableForResourceType",
                f"The provided location '{location}' is not available for resource type "
                f"'Microsoft.Compute/virtualMachineScaleSets'. List of available regions for "
                f"the resource type is '{self.location}'.",
            )
        sku_body = body.get("sku") or {}
        if not sku_body.get("name"):
            raise ArmError(400, "InvalidParameter", "Required parameter 'sku.name' is missing.")
        capacity = sku_body.get("capacity", 0)
        if not isinstance(capacity, int) or capacity < 0 or capacity > 1000:
            raise ArmError(
                400,
                "InvalidParameter",
                "The value of parameter sku.capacity is invalid: it must be between 0 and 1000.",
            )
        profile = (body.get("properties") or {}).get("virtualMachineProfile") or {}
        os_profile = profile.get("osProfile") or {}
        custom = os_profile.get("customData")
        if custom is not None:
            try:
                raw = base64.b64decode(str(custom), validate=True)
            except ValueError:
                raw = None
            if raw is None or len(str(custom)) > 87380:
                raise ArmError(
                    400,
                    "InvalidParameter",
                    "Custom data in OSProfile must be in Base64 encoding and with a maximum "
                    "length of 87380 characters.",
                )
        sku = self._check_sku(str(sku_body["name"]))
        self._check_fits(str(sku["name"]), sku, profile, body.get("plan"))
        return sku, capacity

    @staticmethod
    def _check_fits(
        size: str, sku: Mapping[str, Any], profile: Mapping[str, Any], body_plan: Any
    ) -> None:
        """400 where real ARM refuses the model for this size: a Premium OS disk without the
        PremiumIO capability, a Gen2 image on a size whose HyperVGenerations lack V2, a
        disallowed admin user name."""
        storage = profile.get("storageProfile") or {}
        disk = ((storage.get("osDisk") or {}).get("managedDisk") or {}).get("storageAccountType")
        if str(disk or "").startswith("Premium") and capability(sku, "PremiumIO") != "True":
            raise ArmError(
                400,
                "InvalidParameter",
                f"Requested operation cannot be performed because storage account type "
                f"'{disk}' is not supported for VM size '{size}'.",
            )
        generations = capability(sku, "HyperVGenerations", "V1").split(",")
        image = image_generation(storage.get("imageReference") or {})
        if image is not None and image not in generations:
            number = image.removeprefix("V")
            raise ArmError(
                400,
                "BadRequest",
                f"The selected VM size '{size}' cannot boot Hypervisor Generation '{number}'. "
                "If this was a Create operation please check that the Hypervisor Generation of "
                "the Image matches the Hypervisor Generation of the selected VM Size. If this "
                f"was an Update operation please select a Hypervisor Generation '{number}' VM "
                "Size. For more information, see https://aka.ms/azuregen2vm",
            )
        ref = storage.get("imageReference") or {}
        key = tuple(str(ref.get(k, "")).lower() for k in ("publisher", "offer", "sku"))
        plan_name = IMAGE_PLANS.get(key)  # type: ignore[arg-type]
        if plan_name is not None and (body_plan or {}).get("name") != plan_name:
            raise ArmError(
                400,
                "VMMarketplaceInvalidInput",
                "Creating a virtual machine from Marketplace image or a custom image sourced "
                "from a Marketplace image requires Plan information in the request.",
            )
        user = str((profile.get("osProfile") or {}).get("adminUsername") or "")
        if user.lower() in DISALLOWED_ADMIN_NAMES:
            raise ArmError(400, "InvalidParameter", "The Admin Username specified is not allowed.")

    async def _put_vmss(self, request: web.Request, rg: str, vmss: str) -> web.StreamResponse:
        if not VMSS_NAME.fullmatch(vmss):
            raise ArmError(
                400,
                "InvalidResourceName",
                f"The resource name '{vmss}' is invalid. The name can be up to 64 characters "
                "long. It must begin with a word character other than '_', and it must end "
                "with a word character or with '_'.",
            )
        body = await self._json(request)
        sku, capacity = self._validate_model(body)
        ss = self.scale_sets.get(vmss)
        if ss is not None and ss.resource_group.lower() != rg.lower():
            raise ArmError(409, "Conflict", f"A scale set named '{vmss}' exists elsewhere.")
        if ss is not None and ss.provisioning_state == "Deleting":
            raise ArmError(
                409,
                "OperationNotAllowed",
                f"The operation is not allowed because the scale set '{vmss}' is being deleted.",
            )
        spot = str(
            ((body.get("properties") or {}).get("virtualMachineProfile") or {}).get(
                "priority", "Regular"
            )
        ).lower() in ("spot", "low")
        self._check_quota(vmss, sku, capacity, spot)
        created = ss is None
        model = copy.deepcopy(body)
        model.pop("id", None)
        model.pop("name", None)
        model.pop("type", None)
        if ss is None:
            ss = ScaleSet(vmss, self.resource_groups[rg.lower()], model, sub=self.subscription)
            self.scale_sets[vmss] = ss
        else:
            ss.model = model
            ss.model_version += 1
        ss.provisioning_state = "Creating" if created else "Updating"
        new = self._set_capacity(ss, capacity)
        ss.operation = self._vmss_operation(ss, new)
        return web.json_response(
            ss.view(),
            status=201 if created else 200,
            headers=self._lro_headers(ss.operation, location=False),
        )

    async def _patch_vmss(self, request: web.Request, rg: str, vmss: str) -> web.StreamResponse:
        ss = self._scale_set(rg, vmss)
        body = await self._json(request)
        if ss.provisioning_state == "Deleting":
            raise ArmError(409, "OperationNotAllowed", f"Scale set '{vmss}' is being deleted.")
        merged = copy.deepcopy(ss.model)
        merge(merged, body)
        if "sku" in body:
            sku, capacity = self._validate_model(merged)
        else:
            sku, capacity = self._check_sku(ss.sku), len(ss.instances)
            merged.setdefault("sku", {})["capacity"] = capacity
        self._check_quota(ss.name, sku, capacity, ss.spot)
        if body.get("properties"):
            ss.model_version += 1
        ss.model = merged
        ss.provisioning_state = "Updating"
        new = self._set_capacity(ss, capacity)
        ss.operation = self._vmss_operation(ss, new)
        return web.json_response(
            ss.view(), status=200, headers=self._lro_headers(ss.operation, location=False)
        )

    def _vmss_operation(self, ss: ScaleSet, new: list[Instance]) -> Operation:
        def is_done() -> bool:
            return all(i.provisioned.is_set() for i in new)

        def finish() -> dict[str, Any] | None:
            failed = [i for i in new if i.state == "failed"]
            if failed:
                ss.provisioning_state = "Failed"
                return {
                    "code": "VMExtensionProvisioningError",
                    "message": failed[0].failure or "An extension failed.",
                }
            ss.provisioning_state = "Succeeded"
            return None

        return self._operation(is_done, finish, poke=ss.poke)

    def _set_capacity(self, ss: ScaleSet, capacity: int) -> list[Instance]:
        ss.model.setdefault("sku", {})["capacity"] = capacity
        new: list[Instance] = []
        while len(ss.instances) < capacity:
            new.append(self._add_instance(ss))
        while len(ss.instances) > capacity:
            victim = max(ss.instances, key=int)
            ss.instances.pop(victim).kill()
        return new

    def _add_instance(self, ss: ScaleSet) -> Instance:
        iid = str(ss.next_id)
        ss.next_id += 1
        prefix = str(ss.profile.get("osProfile", {}).get("computerNamePrefix") or ss.name)
        ip = ipaddress.IPv4Address("10.0.0.4") + self._ips
        self._ips += 1
        inst = Instance(
            iid,
            ss.name,
            f"{prefix}{base36(int(iid))}",
            str(ip),
            self.node_dir(ss.name, iid),
            model_version=ss.model_version,
        )
        inst.dir.mkdir(parents=True, exist_ok=True)
        (inst.dir / "tmp").mkdir(exist_ok=True)
        # As Azure's provisioning does: the VM's hostname is its computer name.
        (inst.dir / "etc").mkdir(exist_ok=True)
        (inst.dir / "etc" / "hostname").write_text(inst.computer_name + "\n")
        self._install_gpus(ss, inst)
        for ext in ss.profile.get("extensionProfile", {}).get("extensions", []) or []:
            props = ext.get("properties", {})
            inst.extensions.append(
                Extension(
                    str(ext.get("name", "")),
                    str(props.get("publisher", "")),
                    str(props.get("type", "")),
                    str(props.get("typeHandlerVersion", "1.0")),
                    status("ProvisioningState/creating", "Provisioning in progress"),
                )
            )
        ss.instances[iid] = inst
        inst.task = self._spawn(self._provision(ss, inst, copy.deepcopy(ss.profile)))
        return inst

    async def _provision(self, ss: ScaleSet, inst: Instance, profile: dict[str, Any]) -> None:
        try:
            if self.instance_delay_seconds > 0:
                await asyncio.sleep(self.instance_delay_seconds)
            me = asyncio.current_task()
            assert me is not None
            while inst.polls < self.instance_delay_polls:
                inst.poked.clear()
                self._blocked.add(me)
                try:
                    await inst.poked.wait()
                finally:
                    self._blocked.discard(me)
            inst.power = "running"
            inst.booted.set()
            models = profile.get("extensionProfile", {}).get("extensions", []) or []
            for ext, model in zip(inst.extensions, models, strict=True):
                props = model.get("properties", {})
                if not (
                    ext.type == "CustomScript" and ext.publisher == "Microsoft.Azure.Extensions"
                ):
                    ext.status = status("ProvisioningState/succeeded", "Provisioning succeeded")
                    continue
                if not await self._run_extension(inst, ext, props):
                    inst.state = "failed"
                    inst.failure = (
                        f"VM has reported a failure when processing extension '{ext.name}' "
                        f"(publisher '{ext.publisher}' and type '{ext.type}'). Error message: "
                        f"'{ext.status['message']}'. More information on troubleshooting is "
                        "available at https://aka.ms/VMExtensionCSELinuxTroubleshoot."
                    )
                    return
            inst.state = "succeeded"
        finally:
            inst.provisioned.set()

    async def _booted(self, inst: Instance) -> None:
        """Wait for the VM to boot; `settle()` does not wait for a task parked here."""
        me = asyncio.current_task()
        assert me is not None
        self._blocked.add(me)
        try:
            await inst.booted.wait()
        finally:
            self._blocked.discard(me)

    async def _run_extension(
        self, inst: Instance, ext: Extension, props: Mapping[str, Any]
    ) -> bool:
        settings = {**(props.get("settings") or {}), **(props.get("protectedSettings") or {})}
        ext.status = status("ProvisioningState/transitioning", "Transitioning")
        script = Script()
        ext.script = script
        if settings.get("script"):
            raw = base64.b64decode(str(settings["script"]))
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            text = raw.decode("utf-8", "replace")
        elif settings.get("commandToExecute"):
            text = str(settings["commandToExecute"]) + "\n"
        else:
            text = ""
        if not text:
            script.state, script.exit_code = "Failed", 1
            script.err.extend(b"the extension has neither commandToExecute nor script")
            script.done.set()
        else:
            where = inst.dir / "var/lib/waagent/custom-script/download/0"
            await self._execute(inst, script, text, where=where, env={}, args=[], timeout=5400)
        out, err = tail(script.out), tail(script.err)
        if script.state == "Succeeded":
            ext.status = status(
                "ProvisioningState/succeeded",
                "Provisioning succeeded",
                message=f"Enable succeeded: \n[stdout]\n{out}\n\n[stderr]\n{err}\n",
            )
            return True
        ext.status = status(
            f"ProvisioningState/failed/{script.exit_code}",
            "Provisioning failed",
            level="Error",
            message=(
                "Enable failed: failed to execute command: command terminated with exit "
                f"status={script.exit_code}\n[stdout]\n{out}\n\n[stderr]\n{err}\n"
            ),
        )
        return False

    async def _delete_vmss(self, request: web.Request, rg: str, vmss: str) -> web.StreamResponse:
        if vmss not in self.scale_sets:
            return web.Response(status=204, headers=request_ids())  # ARM: deleting what is gone
        ss = self._scale_set(rg, vmss)
        ss.provisioning_state = "Deleting"
        for inst in list(ss.instances.values()):
            inst.state = "deleting"
            inst.kill()

        def finish() -> None:
            for inst in ss.instances.values():
                inst.kill()
            ss.instances.clear()
            if self.scale_sets.get(ss.name) is ss:
                del self.scale_sets[ss.name]

        op = self._operation(lambda: True, finish)
        ss.operation = op
        return web.Response(status=202, headers=self._lro_headers(op, location=True))

    async def _delete_instances(
        self, request: web.Request, rg: str, vmss: str
    ) -> web.StreamResponse:
        ss = self._scale_set(rg, vmss)
        body = await self._json(request)
        ids = [str(i) for i in body.get("instanceIds") or []]
        if not ids:
            raise ArmError(400, "InvalidParameter", "Required parameter 'instanceIds' is missing.")
        unknown = [i for i in ids if i not in ss.instances]
        if unknown:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The provided instanceId {unknown[0]} is not an active Virtual Machine Scale "
                f"Set VM instanceId.",
            )
        for iid in ids:
            ss.instances.pop(iid).kill()
        ss.model.setdefault("sku", {})["capacity"] = len(ss.instances)
        op = self._operation(lambda: True, lambda: None)
        return web.Response(status=202, headers=self._lro_headers(op, location=True))

    # ------------------------------------------------------------------ VMs

    def _instance(self, rg: str, vmss: str, vm: str) -> tuple[ScaleSet, Instance]:
        ss = self._scale_set(rg, vmss)
        inst = ss.instances.get(vm)
        if inst is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/"
                f"{vm}' under resource group '{rg}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        return ss, inst

    def _instance_view(self, ss: ScaleSet, inst: Instance) -> dict[str, Any]:
        inst.poke()
        if inst.state == "failed":
            prov = status(
                "ProvisioningState/failed/VMExtensionProvisioningError",
                "Provisioning failed",
                level="Error",
                message=inst.failure,
            )
        else:
            prov = status(f"ProvisioningState/{inst.state}", DISPLAY[inst.state])
        power = status(f"PowerState/{inst.power}", f"VM {inst.power}")
        booted = inst.booted.is_set()
        view: dict[str, Any] = {
            "platformUpdateDomain": 0,
            "platformFaultDomain": 0,
            "computerName": inst.computer_name,
            "osName": "ubuntu",
            "osVersion": "22.04",
            "hyperVGeneration": "V2",
            "vmAgent": {
                "vmAgentVersion": "2.11.1.12" if booted else "Unknown",
                "statuses": [
                    status("ProvisioningState/succeeded", "Ready", message="Guest Agent is running")
                    if booted
                    else status(
                        "ProvisioningState/Unavailable",
                        "Not Ready",
                        level="Warning",
                        message="VM status blob is found but not yet populated.",
                    )
                ],
                "extensionHandlers": [],
            },
            "disks": [
                {
                    "name": f"{ss.name}_{inst.id}_OsDisk_1_{inst.vm_id.replace('-', '')}",
                    "statuses": [status("ProvisioningState/succeeded", "Provisioning succeeded")],
                }
            ],
            "statuses": [prov, power],
        }
        if inst.extensions:
            view["extensions"] = [
                {
                    "name": ext.name,
                    "type": f"{ext.publisher}.{ext.type}",
                    "typeHandlerVersion": ext.version,
                    "statuses": [ext.status],
                }
                for ext in inst.extensions
            ]
        return view

    def _vm_json(self, ss: ScaleSet, inst: Instance, *, expand: bool) -> dict[str, Any]:
        profile = ss.profile
        os_profile = copy.deepcopy(profile.get("osProfile") or {})
        for key in ("adminPassword", "customData", "computerNamePrefix"):
            os_profile.pop(key, None)
        os_profile["computerName"] = inst.computer_name
        conf = nic_config(ss)
        vm_id = f"{ss.id}/virtualMachines/{inst.id}"
        props: dict[str, Any] = {
            "latestModelApplied": inst.model_version == ss.model_version,
            "modelDefinitionApplied": "VirtualMachineScaleSet",
            "vmId": inst.vm_id,
            "timeCreated": iso(inst.created),
            "provisioningState": PROVISIONING[inst.state],
            "storageProfile": copy.deepcopy(profile.get("storageProfile") or {}),
            "osProfile": os_profile,
            "networkProfile": {
                "networkInterfaces": [
                    {
                        "id": f"{vm_id}/networkInterfaces/{conf['name']}",
                        "properties": {"primary": True},
                    }
                ]
            },
        }
        if expand:
            props["instanceView"] = self._instance_view(ss, inst)
        else:
            inst.poke()
        body: dict[str, Any] = {
            "name": f"{ss.name}_{inst.id}",
            "id": vm_id,
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": self.location,
            "instanceId": inst.id,
            "sku": {"name": ss.sku, "tier": "Standard"},
            "properties": props,
        }
        if ss.model.get("tags"):
            body["tags"] = copy.deepcopy(ss.model["tags"])
        if inst.extensions:
            body["resources"] = [{"id": f"{vm_id}/extensions/{e.name}"} for e in inst.extensions]
        return body

    async def _list_vms(self, request: web.Request, rg: str, vmss: str) -> web.StreamResponse:
        ss = self._scale_set(rg, vmss)
        expand = request.query.get("$expand", "").lower() == "instanceview"
        self._advance(ss.operation, poll=False)
        value = [self._vm_json(ss, inst, expand=expand) for inst in ordered(ss)]
        return self._page(request, value)

    async def _get_vm(
        self, request: web.Request, rg: str, vmss: str, vm: str
    ) -> web.StreamResponse:
        ss, inst = self._instance(rg, vmss, vm)
        expand = request.query.get("$expand", "").lower() == "instanceview"
        return web.json_response(self._vm_json(ss, inst, expand=expand))

    async def _get_instance_view(
        self, request: web.Request, rg: str, vmss: str, vm: str
    ) -> web.StreamResponse:
        ss, inst = self._instance(rg, vmss, vm)
        return web.json_response(self._instance_view(ss, inst))

    async def _delete_vm(
        self, request: web.Request, rg: str, vmss: str, vm: str
    ) -> web.StreamResponse:
        ss, inst = self._instance(rg, vmss, vm)
        ss.instances.pop(inst.id).kill()
        ss.model.setdefault("sku", {})["capacity"] = len(ss.instances)
        op = self._operation(lambda: True, lambda: None)
        return web.Response(status=202, headers=self._lro_headers(op, location=True))

    # ------------------------------------------------------------------ run commands

    def _check_running(self, inst: Instance) -> None:
        if inst.state == "deleting":
            raise ArmError(
                409,
                "OperationNotAllowed",
                "The operation is not allowed because the virtual machine is being deleted.",
            )
        if inst.power == "deallocated":
            raise ArmError(
                409,
                "OperationNotAllowed",
                "Cannot modify extensions in the VM when the VM is not running.",
            )

    def _rc_id(self, ss: ScaleSet, inst: Instance, name: str) -> str:
        return f"{ss.id}/virtualMachines/{inst.id}/runCommands/{name}"

    def _rc_json(
        self, ss: ScaleSet, inst: Instance, rc: RunCommand, *, expand: bool
    ) -> dict[str, Any]:
        props = copy.deepcopy(rc.properties)
        props.pop("protectedParameters", None)
        props.pop("runAsPassword", None)
        props.setdefault("asyncExecution", False)
        props.setdefault("treatFailureAsDeploymentFailure", False)
        props.setdefault("timeoutInSeconds", 0)
        props["provisioningState"] = rc.provisioning_state
        if expand:
            s = rc.script
            props["instanceView"] = {
                "executionState": s.state,
                "executionMessage": s.message or EXEC_MESSAGE.get(s.state, ""),
                "exitCode": s.exit_code if s.exit_code is not None else 0,
                "output": tail(s.out),
                "error": tail(s.err),
                "startTime": iso(s.start_time),
                "endTime": iso(s.end_time),
                "statuses": None,
            }
        body: dict[str, Any] = {
            "name": rc.name,
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/runCommands",
            "id": self._rc_id(ss, inst, rc.name),
            "location": rc.location,
            "properties": props,
        }
        if rc.tags:
            body["tags"] = rc.tags
        return body

    def _run_command(
        self, rg: str, vmss: str, vm: str, name: str
    ) -> tuple[ScaleSet, Instance, RunCommand]:
        ss, inst = self._instance(rg, vmss, vm)
        rc = inst.run_commands.get(name)
        if rc is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/"
                f"{vm}/runCommands/{name}' under resource group '{rg}' was not found. For more "
                "details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return ss, inst, rc

    async def _list_rcs(
        self, request: web.Request, rg: str, vmss: str, vm: str
    ) -> web.StreamResponse:
        ss, inst = self._instance(rg, vmss, vm)
        expand = request.query.get("$expand", "").lower() == "instanceview"
        value = [self._rc_json(ss, inst, rc, expand=expand) for rc in inst.run_commands.values()]
        return self._page(request, value)

    async def _get_rc(
        self, request: web.Request, rg: str, vmss: str, vm: str, rc: str
    ) -> web.StreamResponse:
        ss, inst, found = self._run_command(rg, vmss, vm, rc)
        expand = request.query.get("$expand", "").lower() == "instanceview"
        return web.json_response(self._rc_json(ss, inst, found, expand=expand))

    async def _put_rc(
        self, request: web.Request, rg: str, vmss: str, vm: str, rc: str
    ) -> web.StreamResponse:
        ss, inst = self._instance(rg, vmss, vm)
        self._check_running(inst)
        body = await self._json(request)
        props = body.get("properties")
        if not isinstance(props, dict) or not isinstance(props.get("source"), dict):
            raise ArmError(
                400, "InvalidParameter", "Required parameter 'properties.source' is missing."
            )
        location = str(body.get("location") or "")
        if location.lower() != self.location:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The location '{location}' does not match the location of the virtual machine "
                f"'{self.location}'.",
            )
        props = copy.deepcopy(props)
        props.pop("provisioningState", None)
        props.pop("instanceView", None)
        existing = inst.run_commands.get(rc)
        if existing is None and len(inst.run_commands) >= MAX_RUN_COMMANDS:
            raise ArmError(
                409,
                "OperationNotAllowed",
                "The maximum number of allowed Managed Run Commands is currently limited to "
                f"{MAX_RUN_COMMANDS}. Please delete some of the existing run commands on VM "
                f"'{ss.name}_{inst.id}' and try again.",
            )
        tags = dict(body.get("tags") or {})
        if existing is not None and existing.properties == props and existing.location == location:
            existing.tags = tags
            found = existing  # same name and properties: nothing runs again
        else:
            if existing is not None:
                kill_script(existing.script)
            found = RunCommand(rc, location, tags, props)
            found.runs = (existing.runs if existing else 0) + 1
            found.provisioning_state = "Creating" if existing is None else "Updating"
            inst.run_commands[rc] = found
            found.script.task = self._spawn(self._run_rc(ss, inst, found))
        script = found.script

        def is_done() -> bool:
            if found.properties.get("asyncExecution"):
                return script.started.is_set() or script.finished
            return script.finished

        def finish() -> dict[str, Any] | None:
            if inst.run_commands.get(rc) is not found:
                return None
            failed = script.state in ("Failed", "TimedOut", "Canceled")
            if failed and found.properties.get("treatFailureAsDeploymentFailure"):
                found.provisioning_state = "Failed"
                return {
                    "code": "VMExtensionProvisioningError",
                    "message": f"Run command '{rc}' failed ({script.state}, exit "
                    f"{script.exit_code}): {tail(script.err)[-300:]}",
                }
            found.provisioning_state = "Succeeded"
            return None

        op = self._operation(is_done, finish)
        status = 201 if existing is None else 200
        return web.json_response(
            self._rc_json(ss, inst, found, expand=False),
            status=status,
            headers=self._lro_headers(op, location=False),
        )

    async def _run_rc(self, ss: ScaleSet, inst: Instance, rc: RunCommand) -> None:
        script = rc.script
        await self._booted(inst)
        source = rc.properties.get("source") or {}
        text = source.get("script")
        if not text:
            what = "scriptUri" if source.get("scriptUri") else "commandId"
            script.state, script.exit_code = "Failed", 1
            script.err.extend(f"the fake node cannot run a {what} source".encode())
            script.start_time = script.end_time = now()
            script.started.set()
            script.done.set()
            return
        env: dict[str, str] = {}
        args: list[str] = []
        for p in [
            *(rc.properties.get("parameters") or []),
            *(rc.properties.get("protectedParameters") or []),
        ]:
            if p.get("name"):
                env[str(p["name"])] = str(p.get("value", ""))
            else:
                args.append(str(p.get("value", "")))
        timeout = rc.properties.get("timeoutInSeconds") or None
        where = inst.dir / "var/lib/waagent/run-command-handler/download" / rc.name / str(rc.runs)
        await self._execute(
            inst, script, str(text), where=where, env=env, args=args, timeout=timeout
        )

    async def _delete_rc(
        self, request: web.Request, rg: str, vmss: str, vm: str, rc: str
    ) -> web.StreamResponse:
        ss, inst = self._instance(rg, vmss, vm)
        found = inst.run_commands.get(rc)
        if found is None:
            return web.Response(status=204, headers=request_ids())  # ARM: deleting what is gone
        kill_script(found.script)
        del inst.run_commands[rc]
        op = self._operation(lambda: True, lambda: None)
        return web.Response(status=202, headers=self._lro_headers(op, location=True))

    async def _action_rc(
        self, request: web.Request, rg: str, vmss: str, vm: str
    ) -> web.StreamResponse:
        ss, inst = self._instance(rg, vmss, vm)
        self._check_running(inst)
        body = await self._json(request)
        if body.get("commandId") != "RunShellScript":
            raise ArmError(
                400,
                "InvalidParameter",
                f"The command id '{body.get('commandId')}' is not valid for a Linux VM.",
            )
        if inst.action is not None and not inst.action.finished:
            raise ArmError(
                409,
                "Conflict",
                "Run command extension execution is in progress. Please wait for completion "
                "before invoking a run command.",
            )
        script = Script()
        inst.action = script
        env: dict[str, str] = {}
        args: list[str] = []
        for p in body.get("parameters") or []:
            if p.get("name"):
                env[str(p["name"])] = str(p.get("value", ""))
            else:
                args.append(str(p.get("value", "")))
        text = "\n".join(str(line) for line in body.get("script") or []) + "\n"
        where = inst.dir / "var/lib/waagent/run-command/download" / str(uuid.uuid4())

        async def run() -> None:
            await self._booted(inst)
            await self._execute(inst, script, text, where=where, env=env, args=args, timeout=5400)

        script.task = self._spawn(run())

        def result() -> dict[str, Any]:
            return {
                "value": [
                    {
                        "code": "ComponentStatus/StdOut/succeeded",
                        "level": "Info",
                        "displayStatus": "Provisioning succeeded",
                        "message": tail(script.out),
                    },
                    {
                        "code": "ComponentStatus/StdErr/succeeded",
                        "level": "Info",
                        "displayStatus": "Provisioning succeeded",
                        "message": tail(script.err),
                    },
                ]
            }

        op = self._operation(lambda: script.finished, lambda: None, result=result)
        return web.Response(status=202, headers=self._lro_headers(op, location=True))

    # ------------------------------------------------------------------ node processes

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _execute(
        self,
        inst: Instance,
        script: Script,
        text: str,
        *,
        where: Path,
        env: Mapping[str, str],
        args: list[str],
        timeout: float | None,
    ) -> None:
        inst.scripts.append(script)
        full_env = {**node_environment(inst.dir, self.node_env), **env}
        await run_script(
            inst.dir, script, text, where=where, env=full_env, args=args, timeout=timeout
        )
