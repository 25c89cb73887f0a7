"""The fake ARM server's resource-SKU catalog, quota families and quota defaults."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "azure"
DEFAULT_LIMITS = {
    "cores": 100,
    "lowPriorityCores": 100,
    "virtualMachines": 25000,
    "virtualMachineScaleSets": 2500,
}
DEFAULT_FAMILY_LIMIT = 100
QUOTA_HELP = (
    "Submit a request for Quota increase at https://aka.ms/ProdportalCRP/#blade/"
    "Microsoft_Azure_Capacity/UsageAndQuota.ReactView by specifying parameters listed in the "
    "‘Details’ section for deployment to succeed. Please read more about quota limits at "
    "https://docs.microsoft.com/en-us/azure/azure-supportability/per-vm-quota-requests"
)
# Size name -> quota family, for the sizes manifests/prices.json knows.
FAMILIES = (
    (r"Standard_NC\d+as_T4_v3", "standardNCASv3_T4Family"),
    (r"Standard_NC\d+s_v3", "standardNCSv3Family"),
    (r"Standard_NC\d+ads_A100_v4", "standardNCADSA100v4Family"),
    (r"Standard_NC\d+ads_H100_v5", "standardNCadsH100v5Family"),
    (r"Standard_ND\d+rs_v2", "standardNDSv2Family"),
    (r"Standard_ND96asr_v4", "standardNDASv4_A100Family"),
    (r"Standard_ND96amsr_A100_v4", "standardNDAMSv4_A100Family"),
    (r"Standard_ND96isr_H100_v5", "standardNDSH100v5Family"),
    (r"Standard_NV\d+ads_A10_v5", "StandardNVADSA10v5Family"),
    (r"Standard_NC\d+r?", "standardNCFamily"),
    (r"Standard_D\d+s_v5", "standardDSv5Family"),
    (r"Standard_DS\d+_v2", "standardDSv2Family"),
    (r"Standard_D\d+_v2", "standardDv2Family"),
    (r"Standard_D\d+", "standardDFamily"),
)


def family_of(size: str) -> str:
    for pattern, family in FAMILIES:
        if re.fullmatch(pattern, size):
            return family
    return "standard" + re.sub(r"[^A-Za-z0-9]", "", size.removeprefix("Standard_")) + "Family"


def catalog(location: str) -> list[dict[str, Any]]:
    """The region's resource-SKU catalog: the saved example moved to `location`, plus the
    sizes manifests/prices.json prices (retired ones are gone, as on Azure)."""
    example = json.loads((FIXTURES / "ListAvailableResourceSkusForARegion.json").read_text())
    skus: list[dict[str, Any]] = []
    for sku in example["responses"]["200"]["body"]["value"]:
        sku = copy.deepcopy(sku)
        sku["locations"] = [location]
        for info in sku.get("locationInfo", []):
            info["location"] = location
        skus.append(sku)
    prices = json.loads((ROOT / "manifests" / "prices.json").read_text())
    for name, entry in prices["skus"].items():
        if entry.get("retired"):
            continue  # retired series are gone from the catalog, as on Azure
        caps = {
            "vCPUs": str(entry["vcpus"]),
            "vCPUsAvailable": str(entry["vcpus"]),
            "GPUs": str(entry.get("gpus", 0)),
            "LowPriorityCapable": "True",
            "HyperVGenerations": "V1,V2",
            "PremiumIO": "True",
            "AcceleratedNetworkingEnabled": "True",
            "RdmaEnabled": "True" if re.search(r"r(_|$)|isr|asr", name) else "False",
            "MaxNetworkInterfaces": "8",
        }
        if not entry.get("gpus"):
            del caps["GPUs"]
        skus.append(
            {
                "resourceType": "virtualMachines",
                "name": name,
                "tier": "Standard",
                "size": name.removeprefix("Standard_"),
                "family": family_of(name),
                "locations": [location],
                "locationInfo": [{"location": location, "zones": ["1", "2", "3"]}],
                "capabilities": [{"name": k, "value": v} for k, v in caps.items()],
                "restrictions": [],
            }
        )
    return skus


def vcpus(sku: Mapping[str, Any]) -> int:
    caps = {c["name"]: c["value"] for c in sku.get("capabilities", [])}
    return int(caps.get("vCPUs", "0"))
