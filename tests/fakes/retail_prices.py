"""A fake Azure Retail Prices API (`GET /api/retail/prices`) on 127.0.0.1, port 0.

It answers the query shape the real API takes: `$filter` with `eq` clauses joined by `and`
(`serviceName`, `armRegionName`, `priceType`, ...) and a parenthesised `or` list of
`armSkuName eq '...'`, `$skip`, `api-version`. Values compare case-sensitively from
api-version 2023-01-01-preview on, as the real API does. Results come in pages of `page_size`
items with a `NextPageLink` back to this server carrying `$skip`.

The items follow the documented shape (currencyCode, tierMinimumUnits, retailPrice, unitPrice,
armRegionName, location, effectiveStartDate, meterId, meterName, productId, skuId, productName,
skuName, serviceName, serviceId, serviceFamily, unitOfMeasure, type, isPrimaryMeterRegion,
armSkuName) and include the noise a real answer has: Windows meters, Spot and Low Priority
meters, a DevTestConsumption and a Reservation row, a second non-primary meter and a row with
an older effectiveStartDate. Pay-as-you-go prices are those of shared/reference/numbers.md;
spot prices other than NC24ads_A100_v4's 0.7345 and the noise prices are invented for tests.

Faults (`throttle`, `fail`, `hang`, `garble`) apply to the next request, or to request number
`at` (0-based), and every request is recorded in `requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web
from yarl import URL

PATH = "/api/retail/prices"
CASE_SENSITIVE_FROM = "2023-01-01"
SERVICE_ID = "DZH313Z7MMC8"
LOCATIONS = {"eastus": "US East", "westeurope": "EU West", "eastus2": "US East 2"}

# Linux pay-as-you-go, eastus (numbers.md). The retired NC series (NC6, NC12, NC24, NC24r) is
# absent, as it is from the real API.
DEFAULT_PRICES: dict[str, Decimal] = {
    "Standard_NC4as_T4_v3": Decimal("0.526"),
    "Standard_NC8as_T4_v3": Decimal("0.752"),
    "Standard_NC16as_T4_v3": Decimal("1.204"),
    "Standard_NC64as_T4_v3": Decimal("4.352"),
    "Standard_NC6s_v3": Decimal("3.06"),
    "Standard_NC12s_v3": Decimal("6.12"),
    "Standard_NC24s_v3": Decimal("12.24"),
    "Standard_NC24ads_A100_v4": Decimal("3.673"),
    "Standard_NC48ads_A100_v4": Decimal("7.346"),
    "Standard_NC96ads_A100_v4": Decimal("14.692"),
    "Standard_NC40ads_H100_v5": Decimal("6.98"),
    "Standard_ND40rs_v2": Decimal("22.032"),
    "Standard_ND96asr_v4": Decimal("27.197"),
    "Standard_ND96amsr_A100_v4": Decimal("32.768"),
    "Standard_ND96isr_H100_v5": Decimal("98.32"),
    "Standard_NV36ads_A10_v5": Decimal("3.20"),
    "Standard_D1": Decimal("0.077"),
    "Standard_D1_v2": Decimal("0.057"),
    "Standard_DS3_v2": Decimal("0.293"),
    "Standard_D2s_v5": Decimal("0.096"),
    "Standard_D4s_v5": Decimal("0.192"),
    "Standard_D8s_v5": Decimal("0.384"),
}
DEFAULT_SPOT: dict[str, Decimal] = {
    "Standard_NC24ads_A100_v4": Decimal("0.7345"),
    "Standard_NC4as_T4_v3": Decimal("0.0789"),  # invented
    "Standard_ND96amsr_A100_v4": Decimal("6.5536"),  # invented
}
RETIRED = ("Standard_NC6", "Standard_NC12", "Standard_NC24", "Standard_NC24r")

_SERIES = {
    "NC4as_T4_v3": "NCasT4 v3",
    "NC8as_T4_v3": "NCasT4 v3",
    "NC16as_T4_v3": "NCasT4 v3",
    "NC64as_T4_v3": "NCasT4 v3",
    "NC6s_v3": "NCSv3",
    "NC12s_v3": "NCSv3",
    "NC24s_v3": "NCSv3",
    "NC24ads_A100_v4": "NCadsA100v4",
    "NC48ads_A100_v4": "NCadsA100v4",
    "NC96ads_A100_v4": "NCadsA100v4",
    "NC40ads_H100_v5": "NCadsH100v5",
    "ND40rs_v2": "NDv2",
    "ND96asr_v4": "NDasrA100v4",
    "ND96amsr_A100_v4": "NDamsrA100v4",
    "ND96isr_H100_v5": "NDisrH100v5",
    "NV36ads_A10_v5": "NVadsA10v5",
    "D1": "D",
    "D1_v2": "Dv2",
    "DS3_v2": "DSv2",
    "D2s_v5": "Dsv5",
    "D4s_v5": "Dsv5",
    "D8s_v5": "Dsv5",
}
_CURRENT = "2024-01-01T00:00:00Z"
_FILTER_CLAUSE = re.compile(r"(\w+)\s+eq\s+'((?:[^']|'')*)'")
_FILTER_FIELDS = {"priceType": "type"}  # filter name -> item field


# ----------------------------------------------------------------------------- items


def vm_item(
    sku: str,
    price: Decimal | str,
    *,
    region: str = "eastus",
    kind: str = "",
    windows: bool = False,
    type_: str = "Consumption",
    primary: bool = True,
    effective: str = _CURRENT,
    unit: str = "1 Hour",
    **extra: Any,
) -> dict[str, Any]:
    """One item as the API lists it. `kind` is "", "Spot" or "Low Priority"."""
    stem = sku.removeprefix("Standard_")
    meter = stem.replace("_", " ") + (f" {kind}" if kind else "")
    series = _SERIES.get(stem, stem.split("_")[0])
    product = f"Virtual Machines {series} Series" + (" Windows" if windows else "")
    product_id = "DZH3" + _digest(product, 8).upper()
    amount = Decimal(price)
    item: dict[str, Any] = {
        "currencyCode": "USD",
        "tierMinimumUnits": Decimal("0.0"),
        "retailPrice": amount,
        "unitPrice": amount,
        "armRegionName": region,
        "location": LOCATIONS.get(region, region),
        "effectiveStartDate": effective,
        "meterId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{product}/{meter}/{region}/{primary}")),
        "meterName": meter,
        "productId": product_id,
        "skuId": f"{product_id}/{_digest(meter + region, 4).upper()}",
        "productName": product,
        "skuName": meter,
        "serviceName": "Virtual Machines",
        "serviceId": SERVICE_ID,
        "serviceFamily": "Compute",
        "unitOfMeasure": unit,
        "type": type_,
        "isPrimaryMeterRegion": primary,
        "armSkuName": sku,
    }
    if type_ == "Reservation":
        item["reservationTerm"] = "1 Year"
    item.update(extra)
    return item


def default_items(
    prices: Mapping[str, Decimal] = DEFAULT_PRICES,
    spot: Mapping[str, Decimal] = DEFAULT_SPOT,
    *,
    region: str = "eastus",
) -> list[dict[str, Any]]:
    """Every size in `prices` (Linux and Windows), its spot meters, and the noise."""
    items: list[dict[str, Any]] = []
    for sku, price in prices.items():
        items.append(vm_item(sku, price, region=region))
        items.append(vm_item(sku, price * 2, region=region, windows=True))
        if sku in spot:
            items.append(vm_item(sku, spot[sku], region=region, kind="Spot"))
            items.append(vm_item(sku, spot[sku] * 2, region=region, kind="Spot", windows=True))
            items.append(vm_item(sku, price / 5, region=region, kind="Low Priority"))
    a100, t4, v100 = "Standard_NC24ads_A100_v4", "Standard_NC4as_T4_v3", "Standard_NC6s_v3"
    if a100 in prices:
        # last year's price, still listed with an older effectiveStartDate
        old = vm_item(a100, Decimal("3.40"), region=region, effective="2022-06-01T00:00:00Z")
        items.insert(0, old)
        # a second meter for the same size in a non-primary meter region, dated later
        items.append(
            vm_item(
                a100,
                Decimal("3.99"),
                region=region,
                primary=False,
                effective="2025-03-01T00:00:00Z",
            )
        )
    if t4 in prices:
        items.append(vm_item(t4, Decimal("0.10"), region=region, type_="DevTestConsumption"))
        items.append(vm_item(t4, Decimal("0.33"), region=region, type_="Reservation"))
    if v100 in prices:
        items.append(vm_item(v100, Decimal("0.01"), region=region, unit="1 GB/Month"))
    # the same sizes elsewhere, which a filter on armRegionName must leave out
    for sku in list(prices)[:3]:
        items.append(vm_item(sku, prices[sku] + 1, region="westeurope"))
    return items


# ----------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class Fault:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int
    raw_query: str = ""  # as sent, before percent-decoding

    @property
    def filter(self) -> str:
        return self.query.get("$filter", "")

    @property
    def skip(self) -> int:
        return int(self.query.get("$skip", "0"))

    @property
    def skus(self) -> list[str]:
        """The armSkuName values the filter asks for."""
        return [_unquote(v) for k, v in _FILTER_CLAUSE.findall(self.filter) if k == "armSkuName"]


class FakeRetailPrices:
    """The fake server; use `async with FakeRetailPrices() as api:` and `api.base_url`."""

    def __init__(
        self,
        items: Iterable[Mapping[str, Any]] | None = None,
        *,
        page_size: int = 3,
        ignore: Iterable[str] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.items: list[dict[str, Any]] = [
            dict(i) for i in (default_items() if items is None else items)
        ]
        self.page_size = page_size
        self.ignore = set(ignore)  # filter fields this server pretends not to apply
        self.host = host
        self.next_link_root: str | None = None  # write NextPageLink against another host
        self.requests: list[RecordedRequest] = []
        self._faults: dict[int, Fault] = {}
        self._queued: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeRetailPrices:
        if self._runner is not None:
            return self
        app = web.Application()
        app.router.add_get(PATH, self._prices)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, self.host, 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def close(self) -> None:
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeRetailPrices:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def root_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeRetailPrices is not started")
        return f"http://{self.host}:{self._port}"

    @property
    def base_url(self) -> str:
        return self.root_url + PATH

    # ---- faults ------------------------------------------------------------------------------

    def inject(self, fault: Fault, *, at: int | None = None) -> None:
        """`fault` answers request number `at` (0-based), or the next request not yet faulted."""
        if at is None:
            self._queued.append(fault)
        else:
            self._faults[at] = fault

    def throttle(self, retry_after: str | None = "7", *, at: int | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = b'{"Error":{"Code":"TooManyRequests","Message":"Too many requests"}}'
        self.inject(Fault(429, headers, body), at=at)

    def fail(self, status: int = 500, body: bytes | None = None, *, at: int | None = None) -> None:
        self.inject(Fault(status, {}, body if body is not None else b"Internal error"), at=at)

    def hang(self, seconds: float = 30.0, *, at: int | None = None) -> None:
        self.inject(Fault(delay=seconds), at=at)

    def garble(self, body: bytes = b'{"Items": [', *, at: int | None = None) -> None:
        self.inject(Fault(200, {"Content-Type": "application/json"}, body), at=at)

    # ---- the API -----------------------------------------------------------------------------

    async def _prices(self, request: web.Request) -> web.StreamResponse:
        number = len(self.requests)
        query = dict(request.query)
        fault = self._faults.pop(number, None)
        if fault is None and self._queued:
            fault = self._queued.pop(0)
        if fault is not None and fault.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.delay)
        if fault is not None and (fault.status != 200 or fault.body is not None):
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    query,
                    fault.status,
                    request.rel_url.raw_query_string,
                )
            )
            return web.Response(status=fault.status, headers=fault.headers, body=fault.body)
        status, payload = self._answer(query)
        self.requests.append(
            RecordedRequest(
                request.method, request.path, query, status, request.rel_url.raw_query_string
            )
        )
        return web.Response(status=status, body=_dumps(payload), content_type="application/json")

    def _answer(self, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        version = query.get("api-version", "")
        exact = version >= CASE_SENSITIVE_FROM
        try:
            skip = int(query.get("$skip", "0"))
            clauses = _parse_filter(query.get("$filter", ""))
        except ValueError as exc:
            return 400, {"Error": {"Code": "BadRequest", "Message": str(exc)}}
        selected = [
            i for i in self.items if all(self._match(i, f, v, exact) for f, v in clauses.items())
        ]
        page = selected[skip : skip + self.page_size]
        more = skip + self.page_size < len(selected)
        link = None
        if more:
            root = self.next_link_root or self.root_url
            link = str(URL(root + PATH).with_query({**query, "$skip": str(skip + self.page_size)}))
        return 200, {
            "BillingCurrency": "USD",
            "CustomerEntityId": "Default",
            "CustomerEntityType": "Retail",
            "Items": page,
            "NextPageLink": link,
            "Count": len(page),
        }

    def _match(self, item: Mapping[str, Any], name: str, wanted: list[str], exact: bool) -> bool:
        if name in self.ignore:
            return True
        value = item.get(_FILTER_FIELDS.get(name, name))
        if not isinstance(value, str):
            return False
        if exact:
            return value in wanted
        return value.lower() in {w.lower() for w in wanted}


def _parse_filter(text: str) -> dict[str, list[str]]:
    """`a eq 'x' and (b eq 'y' or b eq 'z')` -> {"a": ["x"], "b": ["y", "z"]}.

    Enough of OData for the shape the client sends: clauses joined by `and`, and one field
    compared to several values joined by `or` inside parentheses.
    """
    clauses: dict[str, list[str]] = {}
    rest = _FILTER_CLAUSE.sub("", text)
    if re.sub(r"\b(and|or)\b|[()\s]", "", rest):
        raise ValueError(f"Invalid OData filter near {rest.strip()[:40]!r}")
    for name, value in _FILTER_CLAUSE.findall(text):
        clauses.setdefault(name, []).append(_unquote(value))
    return clauses


def _unquote(value: str) -> str:
    return value.replace("''", "'")


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def _dumps(payload: Any) -> bytes:
    """JSON with each Decimal written as the number it is (`3.6730` stays `3.6730`)."""

    def mark(value: Any) -> Any:
        if isinstance(value, Decimal):
            return f"@@dec:{value}@@"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(payload))
    return re.sub(r'"@@dec:([-+0-9.eE]+)@@"', r"\1", text).encode()
