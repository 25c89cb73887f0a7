"""`batchai-bot check`'s image lines: the image each size in use boots (its driver route, see
`scaleset_model.node_image`) offered in the region, and, for an image sold with a purchase plan,
whether the subscription accepted its terms. Each answer is one line with what to do."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from azure.core.rest import HttpRequest
from azure.mgmt.compute.aio import ComputeManagementClient

from services.backends.azure.errors import azure_errors
from services.backends.azure.scaleset_model import ships_drivers
from services.backends.azure.sizes import SkuInfo
from services.core.errors import BackendError, NotFound, UserError

MARKETPLACE_API = "2021-01-01"


def route_text(image: str, skus: Sequence[SkuInfo]) -> str:
    """How the GPUs (and InfiniBand) of these sizes get their drivers on `image`."""
    gpu = any(s.gpus for s in skus)
    rdma = any(s.rdma for s in skus)
    if ships_drivers(image):
        what = "NVIDIA driver, CUDA and the InfiniBand (OFED) driver on the image"
        return what if gpu or rdma else "an HPC image on CPU sizes (its drivers go unused)"
    if gpu or rdma:
        return "a custom image: it must bring its own GPU/InfiniBand driver (none is installed)"
    return "no GPU, no InfiniBand: no driver needed"


async def check_image(
    compute: ComputeManagementClient,
    *,
    subscription: str,
    location: str,
    ref: dict[str, str],
) -> str:
    """One line on `ref` in `location`: its newest version and purchase plan; UserError when the
    region does not offer it or its plan's terms are not accepted."""
    pub, offer, sku, version = ref["publisher"], ref["offer"], ref["sku"], ref["version"]
    urn = f"{pub}:{offer}:{sku}:{version}"
    absent = (
        f"{urn} is not offered in {location} — pick an image or region that has it "
        f"(az vm image list --location {location} --publisher {pub} --offer {offer} --sku {sku} "
        "--all)"
    )
    try:
        async with azure_errors(f"read image {urn} in {location}"):
            if version.lower() == "latest":
                found = await compute.virtual_machine_images.list(
                    location, pub, offer, sku, top=1, orderby="name desc"
                )
                if not found:
                    raise UserError(absent)
                version = str(found[0].name)
            image = await compute.virtual_machine_images.get(location, pub, offer, sku, version)
    except NotFound:
        raise UserError(absent) from None
    plan = image.plan
    if plan is None:
        return f"{pub}:{offer}:{sku} {version} offered in {location}; no purchase plan, no terms"
    accepted = await _terms_accepted(compute, subscription, plan.publisher, plan.product, plan.name)
    terms = f"az vm image terms accept --urn {pub}:{offer}:{sku}:{version}"
    if not accepted:
        raise UserError(
            f"{pub}:{offer}:{sku} {version} is sold under plan {plan.name}: its terms are not "
            f"accepted for this subscription — {terms}"
        )
    return f"{pub}:{offer}:{sku} {version} offered in {location}; plan {plan.name}, terms accepted"


async def _terms_accepted(
    compute: ComputeManagementClient,
    subscription: str,
    publisher: str | None,
    product: str | None,
    plan: str | None,
) -> bool:
    """The marketplace agreement's `accepted` (Microsoft.MarketplaceOrdering), through the
    compute client's pipeline: its credential, endpoint, retries and CA bundle."""
    parts = [quote(p or "", safe="") for p in (subscription, publisher, product, plan)]
    url = (
        f"/subscriptions/{parts[0]}/providers/Microsoft.MarketplaceOrdering/offerTypes/"
        f"virtualmachine/publishers/{parts[1]}/offers/{parts[2]}/plans/{parts[3]}/"
        "agreements/current"
    )
    request = HttpRequest("GET", url, params={"api-version": MARKETPLACE_API})
    async with azure_errors(f"read the marketplace terms of plan {plan}"):
        response = await compute.send_request(request)
        response.raise_for_status()
    body = response.json()
    if not isinstance(body, dict):
        raise BackendError("the marketplace agreement answer is not an object")
    return bool((body.get("properties") or {}).get("accepted"))
