"""VM sizes and vCPU quotas: what the region offers and what the subscription may still use."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.models import Usage

_GPU_TOKEN = re.compile(r"^(GB\d+|[A-Z]{1,2}\d{1,3}[A-Z]?)$")


def gpu_model(size: str) -> str | None:
    """The GPU a size name carries (Standard_NC24ads_A100_v4 -> A100), when it names one."""
    for token in size.upper().split("_")[2:]:
        if _GPU_TOKEN.match(token) and not re.fullmatch(r"V\d", token):
            return token
    return None


@dataclass(frozen=True)
class SkuInfo:
    name: str
    family: str
    vcpus: int
    gpus: int
    spot_capable: bool
    restriction: str | None  # why it cannot be used in the region, or None
    premium_io: bool = True  # the `PremiumIO` capability: Premium SSD OS disks allowed
    generations: frozenset[str] = frozenset({"V1", "V2"})  # `HyperVGenerations`
    rdma: bool = False  # `RdmaEnabled`: InfiniBand


@dataclass(frozen=True)
class Quota:
    name: str
    current: int
    limit: int

    @property
    def left(self) -> int:
        return max(0, self.limit - self.current)


def wire_text(value: object) -> str:
    """An SDK enum's wire value ("Failed"), not its repr ("ExecutionState.FAILED")."""
    return str(getattr(value, "value", value) or "")


def _capabilities(sku: Any) -> dict[str, str]:
    return {c.name: c.value for c in (sku.capabilities or []) if c.name}


def sku_info(sku: Any, location: str) -> SkuInfo:
    caps = _capabilities(sku)
    reason = None
    for r in sku.restrictions or []:
        values = [v.lower() for v in (r.values_property or [])]
        if r.type == "Location" and location.lower() in values:
            reason = wire_text(r.reason_code) or "restricted"
    return SkuInfo(
        name=sku.name,
        family=sku.family or "",
        vcpus=int(float(caps.get("vCPUs", "0"))),
        gpus=int(float(caps.get("GPUs", "0"))),
        spot_capable=caps.get("LowPriorityCapable", "False").lower() == "true",
        restriction=reason,
        premium_io=caps.get("PremiumIO", "False").lower() == "true",
        generations=frozenset(
            g.strip().upper() for g in caps.get("HyperVGenerations", "V1").split(",") if g.strip()
        ),
        rdma=caps.get("RdmaEnabled", "False").lower() == "true",
    )


def same_gpu(skus: Mapping[str, SkuInfo], size: str, *, exclude_restricted: bool) -> list[str]:
    """Other sizes here with the GPU of `size` (by name), sorted."""
    model = gpu_model(size)
    if model is None:
        return []
    return sorted(
        s.name
        for s in skus.values()
        if gpu_model(s.name) == model
        and s.name.lower() != size.lower()
        and not (exclude_restricted and s.restriction)
    )


def quota_problem(
    location: str,
    skus: Mapping[str, SkuInfo],
    usages: Mapping[str, Quota],
    sku: SkuInfo,
    nodes: int,
    *,
    spot: bool,
) -> str | None:
    """One line on the quota that `nodes` more VMs of `sku` would exceed, with what would fit
    instead (fewer nodes, another size with the same GPU, Spot); None when they fit."""
    need = sku.vcpus * nodes
    checks = (
        [("lowPriorityCores", "Spot vCPU")]
        if spot
        else [(sku.family, f"{sku.family} vCPU"), ("cores", "total regional vCPU")]
    )
    for quota_name, label in checks:
        quota = usages.get(quota_name.lower())
        if quota is None or need <= quota.left:
            continue
        alts: list[str] = []
        fit = quota.left // sku.vcpus if sku.vcpus else 0
        if 0 < fit < nodes:
            alts.append(f"{fit} node{'s' if fit > 1 else ''} fit")
        for other in same_gpu(skus, sku.name, exclude_restricted=True):
            o = skus[other.lower()]
            fam = usages.get(o.family.lower())
            regional = usages.get("cores")
            if (
                fam is not None
                and o.vcpus * nodes <= fam.left
                and (regional is None or o.vcpus * nodes <= regional.left)
            ):
                alts.append(f"{o.name} ({fam.left} {o.family} vCPUs free)")
        low = usages.get("lowprioritycores")
        if not spot and sku.spot_capable and low is not None and need <= low.left:
            alts.append(f"--vm-priority lowpriority (Spot: {low.left} vCPUs free)")
        try_text = f" Try: {'; '.join(alts[:4])}." if alts else ""
        return (
            f"not enough {label} quota in {location} for {nodes} × {sku.name}: "
            f"needs {need}, {quota.name} has {quota.left} of {quota.limit} free "
            f"({quota.current} in use).{try_text} Ask for more in the Azure portal under "
            "Quotas → Compute."
        )
    return None


# What bounds the bot's clusters, of the ~100 rows the compute usages API returns: the regional
# vCPUs (dedicated and Spot), the scale-set count (a cluster is one), then every VM family the
# subscription may use or uses (a family with no quota and nothing running is noise in chat).
_REGIONAL = ("cores", "lowPriorityCores", "virtualMachineScaleSets")


def cluster_quotas(rows: list[Usage]) -> list[Usage]:
    """The rows of `list-usages` on Azure, regional first, then the families by name."""
    by_name = {r.name: r for r in rows}
    regional = [by_name[n] for n in _REGIONAL if n in by_name]
    families = sorted(
        (r for r in rows if r.name.endswith("Family") and (r.current or r.limit)),
        key=lambda r: r.name.lower(),
    )
    return regional + families
