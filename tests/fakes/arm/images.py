"""The fake ARM's marketplace images and their terms: which images the region offers (versions,
purchase plan, generation) and which plans' terms the subscription has accepted.

- `GET …/providers/Microsoft.Compute/locations/{loc}/publishers/{p}/artifacttypes/vmimage/
  offers/{o}/skus/{s}/versions` lists a sku's versions (404 `NotFound` "Artifact: VMImage was
  not found." when the region has none), `…/versions/{v}` gives one with its `plan` (only the
  images sold with one carry it) and `hyperVGeneration`;
- `GET …/providers/Microsoft.MarketplaceOrdering/offerTypes/virtualmachine/publishers/{p}/
  offers/{o}/plans/{plan}/agreements/current` answers `properties.accepted`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.arm.catalog import IMAGE_GENERATIONS, IMAGE_PLANS
from tests.fakes.arm.resources import ArmError, request_ids

_SUB = r"/subscriptions/(?P<sub>[^/]+)/providers"
_IMAGE = (
    _SUB + r"/Microsoft\.Compute/locations/(?P<loc>[^/]+)/publishers/(?P<pub>[^/]+)"
    r"/artifacttypes/vmimage/offers/(?P<offer>[^/]+)/skus/(?P<sku>[^/]+)/versions"
)
_AGREEMENT = (
    _SUB + r"/Microsoft\.MarketplaceOrdering/offerTypes/virtualmachine/publishers/(?P<pub>[^/]+)"
    r"/offers/(?P<offer>[^/]+)/plans/(?P<plan>[^/]+)/agreements/current"
)
Key = tuple[str, str, str]


@dataclass
class Image:
    versions: list[str]
    generation: str
    plan: str | None = None


def default_images() -> dict[Key, Image]:
    """The images the bot names, and the NGC image sold with a plan, in every region."""
    images = {key: Image(["22.04.2025110401"], gen) for key, gen in IMAGE_GENERATIONS.items()}
    for key, plan in IMAGE_PLANS.items():
        images[key] = Image(["24.03.4"], "V2", plan)
    return images


class FakeImages:
    """Images offered in the fake's region and the plans whose terms are accepted."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.images: dict[Key, Image] = default_images()
        self.accepted: set[Key] = set()  # (publisher, offer, plan)

    def register(self, route: Callable[..., None]) -> None:
        route("GET", _IMAGE, "compute", self._list)
        route("GET", _IMAGE + r"/(?P<version>[^/]+)", "compute", self._get)
        route("GET", _AGREEMENT, "any", self._agreement)

    def _image(self, loc: str, pub: str, offer: str, sku: str) -> Image:
        found = self.images.get((pub.lower(), offer.lower(), sku.lower()))
        if found is None or loc.lower() != self.location:
            raise ArmError(404, "NotFound", "Artifact: VMImage was not found.")
        return found

    def _id(self, params: Mapping[str, str], sub: str, version: str) -> str:
        return (
            f"/Subscriptions/{sub}/Providers/Microsoft.Compute/Locations/{params['loc']}/"
            f"Publishers/{params['pub']}/ArtifactTypes/VMImage/Offers/{params['offer']}/"
            f"Skus/{params['sku']}/Versions/{version}"
        )

    async def _list(
        self, request: web.Request, loc: str, pub: str, offer: str, sku: str
    ) -> web.StreamResponse:
        image = self._image(loc, pub, offer, sku)
        params = {"loc": loc, "pub": pub, "offer": offer, "sku": sku}
        sub = request.path.split("/")[2]
        versions = sorted(image.versions, reverse=request.query.get("$orderby") == "name desc")
        top = int(request.query.get("$top", "0") or 0)
        body = [
            {"location": loc, "name": v, "id": self._id(params, sub, v)}
            for v in (versions[:top] if top else versions)
        ]
        return web.json_response(body, headers=request_ids())

    async def _get(
        self, request: web.Request, loc: str, pub: str, offer: str, sku: str, version: str
    ) -> web.StreamResponse:
        image = self._image(loc, pub, offer, sku)
        if version not in image.versions:
            raise ArmError(404, "NotFound", "Artifact: VMImage was not found.")
        props: dict[str, Any] = {
            "osDiskImage": {"operatingSystem": "Linux"},
            "hyperVGeneration": image.generation,
            "architecture": "x64",
            "imageDeprecationStatus": {"imageState": "Active"},
        }
        if image.plan is not None:
            props["plan"] = {"publisher": pub, "name": image.plan, "product": offer}
        params = {"loc": loc, "pub": pub, "offer": offer, "sku": sku}
        sub = request.path.split("/")[2]
        body = {"location": loc, "name": version, "id": self._id(params, sub, version)}
        return web.json_response({**body, "properties": props}, headers=request_ids())

    async def _agreement(
        self, request: web.Request, pub: str, offer: str, plan: str
    ) -> web.StreamResponse:
        accepted = (pub.lower(), offer.lower(), plan.lower()) in self.accepted
        body = {
            "id": request.path,
            "name": plan,
            "type": "Microsoft.MarketplaceOrdering/offertypes",
            "properties": {
                "publisher": pub,
                "product": offer,
                "plan": plan,
                "accepted": accepted,
                "licenseTextLink": "https://mpcprodsa.blob.core.windows.net/legalterms/x.txt",
                "privacyPolicyLink": "https://www.nvidia.com/privacy",
            },
        }
        return web.json_response(body, headers=request_ids())
