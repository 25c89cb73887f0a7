"""Before money is spent: which VM sizes the region offers, the vCPU quotas they draw on, a
quota refusal said in one line with alternatives, and `batchai-bot check` (credential, resource
group, subnet, share, then per size in use: the size, its quota family, the image it boots and
its terms), each step a line that says what to do."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.network.aio import NetworkManagementClient

from services.backends.azure.config import AzureConfig, subnet_parts
from services.backends.azure.errors import QUOTA_CODES, azure_errors, error_code, translate
from services.backends.azure.imagecheck import check_image, route_text
from services.backends.azure.scaleset_model import image_reference, node_image
from services.backends.azure.sizes import (
    Quota,
    SkuInfo,
    cluster_quotas,
    quota_problem,
    same_gpu,
    sku_info,
)
from services.core.errors import BatchAIError, NotAllowed, NotFound, QuotaError, UserError
from services.core.ports import FileShare
from services.models import FileLocation, Usage


class Preflight:
    """Sizes and quotas of the region (sizes read once per backend), and the setup check."""

    def __init__(
        self,
        config: AzureConfig,
        *,
        credential: AsyncTokenCredential,
        compute: ComputeManagementClient,
        network: NetworkManagementClient,
        share: FileShare,
    ) -> None:
        self._config = config
        self._credential = credential
        self._compute = compute
        self._network = network
        self._share = share
        self._rg = config.resource_group
        self._skus: dict[str, SkuInfo] | None = None

    async def skus_in_region(self) -> dict[str, SkuInfo]:
        if self._skus is None:
            found: dict[str, SkuInfo] = {}
            location = self._config.location
            async with azure_errors(f"list VM sizes in {location}"):
                async for sku in self._compute.resource_skus.list(
                    filter=f"location eq '{location}'"
                ):
                    if sku.resource_type == "virtualMachines" and sku.name:
                        found[sku.name.lower()] = sku_info(sku, location)
            self._skus = found
        return self._skus

    async def usages(self) -> dict[str, Quota]:
        out: dict[str, Quota] = {}
        async with azure_errors(f"read vCPU quotas in {self._config.location}"):
            async for u in self._compute.usage.list(self._config.location):
                name = str(u.name.value or "")
                out[name.lower()] = Quota(name, int(u.current_value or 0), int(u.limit or 0))
        return out

    async def quota_rows(self, location: str | None) -> list[Usage]:
        """`list-usages`: the compute usages of `location` (default: the bot's region) that
        bound clusters, with their localized names."""
        region = location or self._config.location
        async with azure_errors(f"read vCPU quotas in {region}"):
            found = [
                Usage(
                    str(u.name.value or ""),
                    str(u.name.localized_value or u.name.value or ""),
                    int(u.current_value or 0),
                    int(u.limit or 0),
                )
                async for u in self._compute.usage.list(region)
            ]
        return cluster_quotas(found)

    async def check_capacity(self, vm_size: str, nodes: int, *, spot: bool) -> SkuInfo:
        """Raise a one-line QuotaError (with alternatives) when `nodes` more VMs cannot be had."""
        skus = await self.skus_in_region()
        location = self._config.location
        sku = skus.get(vm_size.lower())
        if sku is None or sku.restriction is not None:
            why = "is not offered" if sku is None else f"is not available ({sku.restriction})"
            alts = same_gpu(skus, vm_size, exclude_restricted=True)
            hint = f"; sizes with the same GPU here: {', '.join(alts)}" if alts else ""
            raise QuotaError(f"{vm_size} {why} in {location} for this subscription{hint}")
        if spot and not sku.spot_capable:
            raise UserError(f"{vm_size} cannot run as Spot (low priority); use dedicated")
        if nodes <= 0:
            return sku
        usages = await self.usages()
        message = quota_problem(self._config.location, skus, usages, sku, nodes, spot=spot)
        if message is not None:
            raise QuotaError(message)
        return sku

    async def explain_quota(
        self, err: HttpResponseError, vm_size: str, nodes: int, spot: bool, what: str
    ) -> BatchAIError:
        """A quota 409 that got past the pre-flight check, said the same way."""
        if error_code(err) in QUOTA_CODES or err.status_code == 409:
            try:
                await self.check_capacity(vm_size, nodes, spot=spot)
            except QuotaError as quota:
                return quota
            except BatchAIError:
                pass
        return translate(err, what)

    async def check_setup(self, uses: Sequence[tuple[str, str]]) -> list[tuple[str, bool, str]]:
        """(name, ok, one-line detail) for the credential, resource group, subnet, share, then
        for the (VM size, image) pairs in use: each size in the region, each quota family's
        vCPUs (the GPU families are what runs out) and each image the sizes boot (their driver
        route) offered in the region with its terms; never raises."""
        cfg = self._config
        sizes = list(dict.fromkeys(size for size, _ in uses))
        out: list[tuple[str, bool, str]] = []
        try:
            await self._credential.get_token(cfg.credential_scope)
            out.append(("credential", True, f"token for {cfg.arm_url}"))
        except Exception as err:  # any failure of the chain is one line with what to do
            out.append(
                (
                    "credential",
                    False,
                    f"no Azure credential ({type(err).__name__}): run `az login`, give the bot a "
                    "managed identity, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and "
                    "AZURE_CLIENT_SECRET",
                )
            )
            skipped = "not checked: needs a working credential"
            out += [(n, False, skipped) for n in ("resource group", "subnet")]
            out.append(await self._check_share())
            out += [(f"vm size {s}", False, skipped) for s in sizes]
            return out
        out.append(await self._check_step("resource group", self._check_group()))
        out.append(await self._check_step("subnet", self._check_subnet()))
        out.append(await self._check_share())
        usable: list[SkuInfo] = []
        for size in sizes:
            row = await self._check_step(f"vm size {size}", self._check_sku(size))
            out.append(row)
            if row[1]:
                usable.append((await self.skus_in_region())[size.lower()])
        out += await self._check_quotas(usable)
        out += await self._check_images(uses, {s.name.lower(): s for s in usable})
        return out

    async def _check_quotas(self, skus: Sequence[SkuInfo]) -> list[tuple[str, bool, str]]:
        """One line per quota family of the usable sizes: room for how many nodes of each, or
        the refusal a cluster would meet, with what would fit and where to ask for more."""
        families: dict[str, list[SkuInfo]] = {}
        for sku in skus:
            families.setdefault(sku.family, []).append(sku)
        if not families:
            return []
        try:
            usages = await self.usages()
        except BatchAIError as err:
            return [(f"quota {f}", False, str(err)) for f in families]
        rows: list[tuple[str, bool, str]] = []
        for family, members in families.items():
            quotas = [q for q in (usages.get(family.lower()), usages.get("cores")) if q]
            free = "; ".join(f"{q.name} {q.left} of {q.limit} vCPUs free" for q in quotas)
            fit = min((q.left for q in quotas), default=0)
            short = [s for s in members if s.vcpus > fit]
            if short:
                rows.append((f"quota {family}", False, _no_room(free, short, usages)))
                continue
            room = ", ".join(f"{fit // s.vcpus if s.vcpus else 0} × {s.name}" for s in members)
            rows.append((f"quota {family}", True, f"{free} — room for {room}"))
        return rows

    async def _check_images(
        self, uses: Sequence[tuple[str, str]], skus: dict[str, SkuInfo]
    ) -> list[tuple[str, bool, str]]:
        """One line per image the usable sizes boot: its driver route, the image in the region
        and, when it is sold with a plan, its terms."""
        booted: dict[str, list[SkuInfo]] = {}
        refused: list[tuple[str, bool, str]] = []
        for size, image in dict.fromkeys(uses):
            sku = skus.get(size.lower())
            if sku is None:
                continue
            try:
                node = node_image(image, sku)
                image_reference(node, sku)
            except UserError as err:
                refused.append((f"image {image} on {sku.name}", False, str(err)))
                continue
            booted.setdefault(node, []).append(sku)
        rows: list[tuple[str, bool, str]] = []
        for image, members in booted.items():
            names = ", ".join(dict.fromkeys(s.name for s in members))
            route = f"{names}: {route_text(image, members)}"
            ref = image_reference(image, members[0])
            try:
                found = await check_image(
                    self._compute,
                    subscription=self._config.subscription_id,
                    location=self._config.location,
                    ref=ref,
                )
            except BatchAIError as err:
                rows.append((f"image {image}", False, f"{route}; {err}"))
                continue
            rows.append((f"image {image}", True, f"{route}; {found}"))
        return rows + refused

    async def _check_step(self, name: str, step: Awaitable[str]) -> tuple[str, bool, str]:
        hints = {
            "resource group": "give the bot's identity Virtual Machine Contributor on it",
            "subnet": "give the bot's identity Network Contributor (or the subnets/join/action "
            "permission) on the virtual network",
        }
        try:
            return (name, True, await step)
        except NotAllowed as err:
            hint = hints.get(name, "check the bot identity's roles")
            return (name, False, f"{err} — {hint}")
        except BatchAIError as err:
            return (name, False, str(err))

    async def _check_group(self) -> str:
        async with azure_errors(f"resource group {self._rg}"):
            count = 0
            async for _ in self._compute.virtual_machine_scale_sets.list(self._rg):
                count += 1
        return f"{self._rg}: readable, {count} scale set(s)"

    async def _check_subnet(self) -> str:
        rg, vnet, subnet = subnet_parts(self._config.subnet_id)
        async with azure_errors(f"subnet {vnet}/{subnet}"):
            found = await self._network.subnets.get(rg, vnet, subnet)
        nat = found.nat_gateway is not None
        note = (
            "NAT gateway attached" if nat else "no NAT gateway: make sure nodes reach the internet"
        )
        return f"{vnet}/{subnet}: {found.address_prefix or 'found'}, {note}"

    async def _check_share(self) -> tuple[str, bool, str]:
        share = self._config.share
        where = f"{share} on {self._config.storage_account}"
        try:
            await self._share.list_files(FileLocation(share, ""))
        except NotFound:
            return ("share", False, f"{where}: no such share — create it (az storage share create)")
        except NotAllowed as err:
            return ("share", False, f"{where}: {err} — check AZURE_STORAGE_KEY")
        except BatchAIError as err:
            return ("share", False, f"{where}: {err}")
        return ("share", True, f"{where}: readable")

    async def _check_sku(self, vm_size: str) -> str:
        sku = await self.check_capacity(vm_size, 0, spot=False)
        gpus = f", {sku.gpus} GPU(s)" if sku.gpus else ""
        return f"{sku.name} in {self._config.location}: {sku.vcpus} vCPUs{gpus}"


def _no_room(free: str, short: Sequence[SkuInfo], usages: dict[str, Quota]) -> str:
    """The check's line for a family without room for one node: the fix first (a quota line is
    cut at 300 characters), then Spot when its quota would take the node."""
    need = ", ".join(f"1 × {s.name} needs {s.vcpus}" for s in short)
    low = usages.get("lowprioritycores")
    spot = [s for s in short if s.spot_capable and low is not None and s.vcpus <= low.left]
    alt = f"; or --vm-priority lowpriority ({low.left} Spot vCPUs free)" if spot and low else ""
    return f"{free}, {need} — ask for more in the Azure portal under Quotas → Compute{alt}"
