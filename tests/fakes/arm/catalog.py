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


# Capabilities the real resource-SKU list gives these sizes (the rest: PremiumIO, Gen1 and Gen2):
# the old D and Dv2 sizes take no Premium disk and boot Gen1 only (like the example's A sizes);
# the A100/H100 v4-v5 sizes boot Gen2 only.
NO_PREMIUM_IO = {"Standard_D1", "Standard_D1_v2"}
GEN1_ONLY = {"Standard_D1", "Standard_D1_v2"}
GEN2_ONLY = re.compile(
    r"Standard_(NC\d+ads_(A100_v4|H100_v5)|ND96(asr_v4|amsr_A100_v4|isr_H100_v5))"
)
# What the images the bot names boot: (publisher, offer, sku) -> HyperVGeneration.
IMAGE_GENERATIONS = {
    ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts"): "V1",
    ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"): "V2",
    ("microsoft-dsvm", "ubuntu-hpc", "2204"): "V2",
    ("microsoft-dsvm", "ubuntu-2204", "2204"): "V1",
    ("microsoft-dsvm", "ubuntu-2204", "2204-gen2"): "V2",
}


# osProfile.adminUsername values the Compute API refuses (its documented "Disallowed values").
DISALLOWED_ADMIN_NAMES = frozenset(
    {
        "administrator", "admin", "user", "user1", "test", "user2", "test1", "user3", "admin1",
        "1", "123", "a", "actuser", "adm", "admin2", "aspnet", "backup", "console", "david",
        "guest", "john", "owner", "root", "server", "sql", "support", "support_388945a0", "sys",
        "test2", "test3", "user4", "user5",
    }
)  # fmt: skip
# A scale set's name: 1-64 word characters, '.' or '-', beginning with a word character other
# than '_' and ending with one (or '_').
VMSS_NAME = re.compile(r"[A-Za-z0-9](?:[\w.-]{0,62}\w)?", re.ASCII)


# Marketplace images sold with a purchase plan: a model without the matching `plan` is refused.
# The first-party Ubuntu, Ubuntu-HPC and DSVM images have none.
IMAGE_PLANS = {
    ("nvidia", "ngc_azure_17_11", "ngc-base-version-24_03_4_gen2"): "ngc-base-version-24_03_4_gen2",
}


def image_generation(ref: Mapping[str, Any]) -> str | None:
    """The HyperVGeneration of a marketplace image, None when the fake does not know it."""
    key = tuple(str(ref.get(k, "")).lower() for k in ("publisher", "offer", "sku"))
    found = IMAGE_GENERATIONS.get(key)  # type: ignore[arg-type]
    if found is None and "gen2" in key[2]:
        return "V2"
    return found


def capability(sku: Mapping[str, Any], name: str, default: str = "") -> str:
    caps = {c["name"]: c["value"] for c in sku.get("capabilities", [])}
    return str(caps.get(name, default))


# Sizes the catalog offers beyond manifests/prices.json: (vCPUs, GPUs).
EXTRA_SIZES = {"Standard_ND96isr_MI300X_v5": (96, 8)}


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
            "HyperVGenerations": "V1"
            if name in GEN1_ONLY
            else "V2"
            if GEN2_ONLY.fullmatch(name)
            else "V1,V2",
            "PremiumIO": str(name not in NO_PREMIUM_IO),
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
    for name, (cpus, gpus) in EXTRA_SIZES.items():
        skus.append(
            {
                "resourceType": "virtualMachines",
                "name": name,
                "tier": "Standard",
                "size": name.removeprefix("Standard_"),
                "family": family_of(name),
                "locations": [location],
                "locationInfo": [{"location": location, "zones": ["1", "2", "3"]}],
                "capabilities": [
                    {"name": k, "value": v}
                    for k, v in {
                        "vCPUs": str(cpus),
                        "GPUs": str(gpus),
                        "LowPriorityCapable": "False",
                        "HyperVGenerations": "V2",
                        "PremiumIO": "True",
                        "RdmaEnabled": "True",
                    }.items()
                ],
                "restrictions": [],
            }
        )
    return skus


def vcpus(sku: Mapping[str, Any]) -> int:
    caps = {c["name"]: c["value"] for c in sku.get("capabilities", [])}
    return int(caps.get("vCPUs", "0"))
