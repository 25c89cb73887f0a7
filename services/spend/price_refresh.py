"""Refresh the bundled price table from the Azure Retail Prices API (prices.azure.com).

The API needs no login. `RetailPrices.fetch` asks for the Linux pay-as-you-go and spot meters of
the given VM sizes in one region, follows `NextPageLink` to the end and keeps one row per size
and kind. `refresh_prices` stores what it found (the store's price cache is replaced as a whole);
`load_refreshed` lays the cache over the bundled table. A size the API no longer lists (the
retired NC series) keeps its bundled price; nothing ever becomes $0.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp
from yarl import URL

from services.core.clock import utcnow
from services.core.errors import BackendError, TransientError, UserError
from services.spend.pricing import PriceOverride, PriceTable, normalize_region, sku_key

API: Final = "Azure Retail Prices API"
SKUS_PER_REQUEST: Final = 10
MAX_PAGES: Final = 200
_HOUR: Final = "1 Hour"


@dataclass(frozen=True)
class RetailRow:
    """One hourly Linux meter of one VM size, as the API lists it (after the noise is dropped)."""

    sku: str  # armSkuName, e.g. Standard_NC24ads_A100_v4
    region: str  # armRegionName, e.g. eastus
    spot: bool
    usd_per_hour: Decimal  # retailPrice, exact
    effective_start: datetime
    primary: bool  # isPrimaryMeterRegion
    product_name: str = ""
    sku_name: str = ""
    meter_name: str = ""


@dataclass(frozen=True)
class RetailFetch:
    """What one `fetch` found, and how many pages it read."""

    rows: tuple[RetailRow, ...]
    pages: int


@dataclass(frozen=True)
class PriceRefresh:
    """The outcome of `refresh_prices`: rows stored, pages read, sizes the API did not list."""

    rows: int
    pages: int
    missing: tuple[str, ...]


class PriceStore(Protocol):
    """The part of the store the refresh needs (`services.store.SqlStore` has it)."""

    async def save_prices(
        self, rows: Sequence[tuple[str, str, bool, Decimal]], source: str, at: datetime
    ) -> None: ...

    async def load_prices(self) -> Sequence[PriceOverride]: ...


class RetailPrices:
    """A small client of `GET https://prices.azure.com/api/retail/prices`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str = "https://prices.azure.com/api/retail/prices",
        api_version: str = "2023-01-01-preview",
        timeout: float = 30,
    ) -> None:
        self._session = session
        self._base = URL(base_url)
        self._api_version = api_version
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    @property
    def base_url(self) -> str:
        return str(self._base)

    async def fetch(self, *, region: str, skus: Collection[str]) -> list[RetailRow]:
        """Pay-as-you-go and spot rows of `skus` in `region`: at most one per size and kind.

        Give the sizes in their canonical spelling (`Standard_NC6s_v3`): the API compares filter
        values case-sensitively, so `standard_nc6s_v3` finds nothing.
        """
        return list((await self.fetch_pages(region=region, skus=skus)).rows)

    async def fetch_pages(self, *, region: str, skus: Collection[str]) -> RetailFetch:
        """As `fetch`, and how many pages were read (at most `MAX_PAGES` in all)."""
        where = normalize_region(region)
        wanted = {sku_key(s): s.strip() for s in skus}
        found: list[RetailRow] = []
        pages = 0
        for chunk in _chunks(sorted(wanted.values()), SKUS_PER_REQUEST):
            url: URL | None = self._query(query_filter(where, chunk))
            seen: set[str] = set()
            while url is not None:
                if pages >= MAX_PAGES:
                    raise BackendError(f"{API}: gave up after {MAX_PAGES} pages")
                if str(url) in seen:
                    raise BackendError(f"{API}: NextPageLink repeats a page already read")
                seen.add(str(url))
                page = await self._get(url)
                pages += 1
                found.extend(_rows(page, where, wanted))
                url = self._next(page)
        return RetailFetch(rows=tuple(_best(found)), pages=pages)

    def _query(self, odata_filter: str) -> URL:
        # Spaces as %20 rather than the form encoding's "+": what the API's own examples send.
        query = "&".join(
            f"{name}={quote(value, safe=safe)}"
            for name, value, safe in (
                ("api-version", self._api_version, ""),
                ("$filter", odata_filter, "'()"),
            )
        )
        return URL(f"{self._base.with_query(None)}?{query}", encoded=True)

    async def _get(self, url: URL) -> dict[str, Any]:
        try:
            async with self._session.get(
                url, timeout=self._timeout, headers={"Accept": "application/json"}
            ) as resp:
                body = await resp.read()
                if resp.status == 429 or resp.status >= 500:
                    raise TransientError(
                        f"{API}: HTTP {resp.status} {resp.reason or ''}".rstrip()
                        + ", try again later",
                        retry_after=_retry_after(resp.headers.get("Retry-After")),
                    )
                if resp.status >= 400:
                    raise BackendError(
                        f"{API}: HTTP {resp.status} {resp.reason or ''}".rstrip() + _detail(body)
                    )
        except TimeoutError:
            raise TransientError(f"{API}: no answer within {self._timeout.total:g} s") from None
        except aiohttp.ClientConnectionError as exc:
            raise TransientError(f"{API}: connection failed ({_one_line(str(exc))})") from None
        except aiohttp.ClientError as exc:
            raise BackendError(f"{API}: request failed ({_one_line(str(exc))})") from None
        try:
            data = json.loads(body, parse_float=Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BackendError(f"{API}: the answer is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("Items"), list):
            raise BackendError(f"{API}: the answer has no Items list")
        return data

    def _next(self, page: dict[str, Any]) -> URL | None:
        link = page.get("NextPageLink")
        if link is None or link == "":
            return None
        if not isinstance(link, str):
            raise BackendError(f"{API}: NextPageLink is not a string")
        url = URL(link)
        if not url.is_absolute():
            url = self._base.join(url)
        # The API writes an explicit :443; compare scheme, host and effective port.
        if (url.scheme, url.host, url.port) != (
            self._base.scheme,
            self._base.host,
            self._base.port,
        ):
            raise BackendError(f"{API}: NextPageLink points at another host ({url.host})")
        return url


async def refresh_prices(
    *, client: RetailPrices, store: PriceStore, table: PriceTable, region: str, now: datetime
) -> PriceRefresh:
    """Fetch the sizes the bundled table knows and replace the store's price cache with them.

    Raises TransientError / BackendError when the API fails, and BackendError when it lists none
    of the sizes at all; in both cases the previous cache is left as it was.
    """
    where = normalize_region(region)
    if where != table.region:
        raise UserError(f"the price table covers {table.region} only, not {region!r}")
    result = await client.fetch_pages(region=where, skus=table.skus())
    canonical = {sku_key(s): s for s in table.skus()}
    rows = [
        (canonical[sku_key(r.sku)], where, r.spot, r.usd_per_hour)
        for r in sorted(result.rows, key=lambda r: (sku_key(r.sku), r.spot))
    ]
    listed = {sku_key(r.sku) for r in result.rows if not r.spot}
    if not listed:
        raise BackendError(f"{API}: no pay-as-you-go price for any of {len(canonical)} sizes")
    source = f"{API} {now.date().isoformat()}"
    await store.save_prices(rows, source=source, at=now)
    missing = tuple(s for key, s in sorted(canonical.items()) if key not in listed)
    return PriceRefresh(rows=len(rows), pages=result.pages, missing=missing)


async def load_refreshed(table: PriceTable, store: PriceStore) -> PriceTable:
    """`table` with the stored refreshed prices in place of its bundled ones (same region)."""
    return table.with_overrides(await store.load_prices())


def query_filter(region: str, skus: Sequence[str]) -> str:
    """The OData `$filter` for the consumption meters of `skus` in `region`.

    The API still answers with Windows, spot and low-priority meters; parsing drops the noise.

    Values are case-sensitive from api-version 2023-01-01-preview on, so the sizes are sent in
    their canonical spelling (`Standard_NC6s_v3`).
    """
    base = (
        f"serviceName eq 'Virtual Machines' and armRegionName eq {_quoted(region)} "
        "and priceType eq 'Consumption'"
    )
    if not skus:
        return base
    return base + " and (" + " or ".join(f"armSkuName eq {_quoted(s)}" for s in skus) + ")"


# ----------------------------------------------------------------------------- parsing


def _rows(page: dict[str, Any], region: str, wanted: dict[str, str]) -> Iterator[RetailRow]:
    for i, item in enumerate(page["Items"]):
        where = f"Items[{i}]"
        if not isinstance(item, dict):
            raise BackendError(f"{API}: {where} is not an object")
        sku = _str(item, "armSkuName", where)
        if sku_key(sku) not in wanted or normalize_region(_str(item, "armRegionName", where)) != (
            region
        ):
            continue
        product = _str(item, "productName", where)
        sku_name = _str(item, "skuName", where)
        meter = _str(item, "meterName", where)
        names = (sku_name, meter)
        if (
            item.get("type") != "Consumption"
            or item.get("unitOfMeasure") != _HOUR
            or "Windows" in product
            or any("Low Priority" in n for n in names)
        ):
            continue
        rate = item.get("retailPrice")
        if isinstance(rate, bool) or not isinstance(rate, int | Decimal):
            raise BackendError(f"{API}: {where}.retailPrice is not a number")
        price = Decimal(rate)
        if not price.is_finite() or price <= 0:
            continue  # never a $0 (or negative) price
        yield RetailRow(
            sku=sku,
            region=region,
            spot=any("Spot" in n for n in names),
            usd_per_hour=price,
            effective_start=_when(item.get("effectiveStartDate"), where),
            primary=item.get("isPrimaryMeterRegion") is not False,
            product_name=product,
            sku_name=sku_name,
            meter_name=meter,
        )


def _best(rows: Sequence[RetailRow]) -> list[RetailRow]:
    """One row per size and kind: a primary meter region first, then the latest start date."""
    best: dict[tuple[str, bool], RetailRow] = {}
    for row in rows:
        key = (sku_key(row.sku), row.spot)
        held = best.get(key)
        if held is None or (row.primary, row.effective_start) > (
            held.primary,
            held.effective_start,
        ):
            best[key] = row
    return [best[k] for k in sorted(best)]


def _str(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BackendError(f"{API}: {where}.{key} is not a string")
    return value


def _when(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise BackendError(f"{API}: {where}.effectiveStartDate is not a date")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BackendError(f"{API}: {where}.effectiveStartDate is not a date") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())


def _detail(body: bytes) -> str:
    """': <message>' from an error body ({"Error": {"Message": ...}} or text), on one line."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("Error") or data.get("error")
        if isinstance(error, dict):
            message = error.get("Message") or error.get("message")
            if isinstance(message, str):
                text = message
    text = _one_line(text)
    return f": {text}" if text else ""


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _quoted(value: str) -> str:
    """An OData string literal ('' escapes a quote)."""
    return "'" + value.replace("'", "''") + "'"


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
