"""Refreshing prices from the Azure Retail Prices API, against a local fake (never the internet)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime

import aiohttp
import pytest

from services.core.errors import BackendError, TransientError, UserError
from services.spend import price_refresh
from services.spend.price_refresh import (
    PriceRefresh,
    RetailPrices,
    RetailRow,
    load_refreshed,
    query_filter,
    refresh_prices,
)
from services.spend.pricing import BUNDLED_PRICES, PriceTable, load_price_table
from services.store import SqlStore
from tests.fakes.retail_prices import (
    DEFAULT_PRICES,
    DEFAULT_SPOT,
    RETIRED,
    FakeRetailPrices,
    default_items,
    vm_item,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SOURCE = "Azure Retail Prices API 2026-11-27"
A100, T4, V100 = "Standard_NC24ads_A100_v4", "Standard_NC4as_T4_v3", "Standard_NC6s_v3"
BASE_FILTER = (
    "serviceName eq 'Virtual Machines' and armRegionName eq 'eastus' and priceType eq 'Consumption'"
)


@pytest.fixture
def table() -> PriceTable:
    return load_price_table(BUNDLED_PRICES)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def api() -> AsyncIterator[FakeRetailPrices]:
    async with FakeRetailPrices() as fake:
        yield fake


@pytest.fixture
def client(api: FakeRetailPrices, session: aiohttp.ClientSession) -> RetailPrices:
    return RetailPrices(session, base_url=api.base_url, timeout=5)


def by_kind(rows: list[RetailRow]) -> dict[tuple[str, bool], RetailRow]:
    keyed = {(r.sku, r.spot): r for r in rows}
    assert len(keyed) == len(rows), "one row per size and kind"
    return keyed


async def fetch_all(client: RetailPrices, table: PriceTable) -> list[RetailRow]:
    return await client.fetch(region="eastus", skus=table.skus())


# ----------------------------------------------------------------------------- fetching


async def test_paging_is_followed_to_the_last_page(
    client: RetailPrices, api: FakeRetailPrices, table: PriceTable
) -> None:
    result = await client.fetch_pages(region="eastus", skus=table.skus())

    assert result.pages == len(api.requests) >= 3
    assert all(r.status == 200 and r.path == "/api/retail/prices" for r in api.requests)
    # each chunk of sizes is read from $skip=0 in steps of the page size until no link is left
    starts = [i for i, r in enumerate(api.requests) if r.skip == 0]
    assert len(starts) == 3  # 26 sizes, 10 per request
    for begin, end in zip(starts, [*starts[1:], len(api.requests)], strict=True):
        assert [r.skip for r in api.requests[begin:end]] == list(range(0, 3 * (end - begin), 3))
    # everything the fake lists for eastus was seen: all 22 live sizes and their spot meters
    rows = by_kind(list(result.rows))
    assert {sku for sku, spot in rows if not spot} == set(DEFAULT_PRICES)
    assert {sku for sku, spot in rows if spot} == set(DEFAULT_SPOT)


async def test_the_last_page_has_no_next_link_and_the_rest_do(
    session: aiohttp.ClientSession, api: FakeRetailPrices
) -> None:
    api.page_size = 2
    client = RetailPrices(session, base_url=api.base_url)
    rows = await client.fetch(region="eastus", skus=[A100])
    assert [r.skip for r in api.requests] == [0, 2, 4, 6]  # 7 A100 items in eastus, 2 a page
    assert by_kind(rows)[(A100, False)].usd_per_hour == Decimal("3.673")


async def test_filter_asks_for_linux_consumption_meters_of_at_most_ten_sizes(
    client: RetailPrices, api: FakeRetailPrices, table: PriceTable
) -> None:
    await fetch_all(client, table)

    first_pages = [r for r in api.requests if r.skip == 0]
    asked: list[str] = []
    for request in first_pages:
        assert request.query["api-version"] == "2023-01-01-preview"
        assert request.filter.startswith(BASE_FILTER + " and (armSkuName eq 'Standard_")
        assert request.filter.endswith("')")
        assert 1 <= len(request.skus) <= 10
        asked += request.skus
    assert sorted(asked) == sorted(table.skus())  # canonical spelling: values are case-sensitive
    raw = first_pages[0].raw_query
    assert raw.startswith("api-version=2023-01-01-preview&$filter=serviceName%20eq%20'Virtual")
    assert "+" not in raw
    # later pages repeat the same query with a $skip
    for request in api.requests:
        assert request.filter in {r.filter for r in first_pages}


def test_filter_text() -> None:
    assert query_filter("East US", []) == (
        "serviceName eq 'Virtual Machines' and armRegionName eq 'East US' "
        "and priceType eq 'Consumption'"
    )
    assert query_filter("eastus", ["Standard_A", "it's"]) == (
        BASE_FILTER + " and (armSkuName eq 'Standard_A' or armSkuName eq 'it''s')"
    )


async def test_windows_low_priority_devtest_reservation_and_other_units_are_excluded(
    session: aiohttp.ClientSession, table: PriceTable
) -> None:
    # a server that ignores priceType and armRegionName hands the client every kind of noise
    async with FakeRetailPrices(ignore={"priceType", "armRegionName"}) as api:
        client = RetailPrices(session, base_url=api.base_url)
        rows = await fetch_all(client, table)
    for row in rows:
        assert row.region == "eastus"
        assert "Windows" not in row.product_name
        assert "Low Priority" not in row.meter_name and "Low Priority" not in row.sku_name
    keyed = by_kind(rows)
    assert keyed[(T4, False)].usd_per_hour == Decimal("0.526")  # not DevTest 0.10, not RI 0.33
    assert keyed[(V100, False)].usd_per_hour == Decimal("3.06")  # not the per-GB meter
    assert keyed[(A100, True)].usd_per_hour == Decimal("0.7345")  # not Windows spot
    assert len(keyed) == len(DEFAULT_PRICES) + len(DEFAULT_SPOT)


async def test_spot_meters_are_spot_prices(client: RetailPrices, table: PriceTable) -> None:
    keyed = by_kind(await fetch_all(client, table))
    spot = keyed[(A100, True)]
    assert spot.spot and spot.meter_name == "NC24ads A100 v4 Spot"
    assert spot.usd_per_hour == Decimal("0.7345")
    assert keyed[(T4, True)].usd_per_hour == Decimal("0.0789")
    assert keyed[(A100, False)].spot is False
    assert (V100, True) not in keyed  # no spot meter listed, no spot price invented


async def test_latest_effective_start_wins_and_primary_meter_region_is_preferred(
    client: RetailPrices, table: PriceTable
) -> None:
    # the fake lists A100 at 3.40 (2022, older), 3.673 (2024) and 3.99 (2025, non-primary region)
    row = by_kind(await fetch_all(client, table))[(A100, False)]
    assert row.usd_per_hour == Decimal("3.673")
    assert row.primary and row.effective_start == datetime(2024, 1, 1, tzinfo=UTC)


async def test_row_choice_does_not_depend_on_order(session: aiohttp.ClientSession) -> None:
    sku = "Standard_NC6s_v3"
    items = [
        vm_item(sku, "3.10", effective="2025-06-01T00:00:00Z"),
        vm_item(sku, "2.90", effective="2023-01-01T00:00:00Z"),
        vm_item(sku, "3.20", effective="2025-06-01T00:00:00Z", primary=False),
        vm_item(sku, "0.61", kind="Spot", effective="2025-01-01T00:00:00Z"),
        vm_item(sku, "0.66", kind="Spot", effective="2025-09-01T00:00:00Z"),
        vm_item(sku, "0.50", kind="Spot", effective="2026-01-01T00:00:00Z", primary=False),
    ]
    for ordered in (items, items[::-1]):
        async with FakeRetailPrices(ordered, page_size=2) as api:
            client = RetailPrices(session, base_url=api.base_url)
            keyed = by_kind(await client.fetch(region="East US", skus=[sku]))
            # filter values are case-sensitive from api-version 2023-01-01-preview on
            assert await client.fetch(region="eastus", skus=["standard_nc6s_v3"]) == []
        assert keyed[(sku, False)].usd_per_hour == Decimal("3.10")
        assert keyed[(sku, True)].usd_per_hour == Decimal("0.66")


async def test_prices_keep_the_json_number_text(session: aiohttp.ClientSession) -> None:
    async with FakeRetailPrices([vm_item(A100, Decimal("3.6730"))]) as api:
        client = RetailPrices(session, base_url=api.base_url)
        (row,) = await client.fetch(region="eastus", skus=[A100])
    assert isinstance(row.usd_per_hour, Decimal)
    assert str(row.usd_per_hour) == "3.6730"


async def test_zero_prices_are_never_taken(session: aiohttp.ClientSession) -> None:
    async with FakeRetailPrices([vm_item(A100, "0"), vm_item(A100, "0.0", kind="Spot")]) as api:
        client = RetailPrices(session, base_url=api.base_url)
        assert await client.fetch(region="eastus", skus=[A100]) == []


async def test_no_sizes_means_no_request(client: RetailPrices, api: FakeRetailPrices) -> None:
    assert await client.fetch(region="eastus", skus=[]) == []
    assert api.requests == []


# ----------------------------------------------------------------------------- refresh and load


async def test_refresh_saves_pay_as_you_go_and_spot_rows(
    client: RetailPrices, store: SqlStore, table: PriceTable
) -> None:
    result = await refresh_prices(client=client, store=store, table=table, region="eastus", now=NOW)

    assert isinstance(result, PriceRefresh)
    assert result.rows == len(DEFAULT_PRICES) + len(DEFAULT_SPOT) == 25
    assert result.pages >= 3
    assert sorted(result.missing) == sorted(RETIRED)
    saved = {
        (sku, spot): (rate, at, source)
        for sku, _r, spot, rate, at, source in await store.load_prices()
    }
    assert len(saved) == result.rows
    assert saved[(A100, False)] == (Decimal("3.673"), NOW, SOURCE)
    assert saved[(A100, True)] == (Decimal("0.7345"), NOW, SOURCE)
    assert all(region == "eastus" for _s, region, *_ in await store.load_prices())
    assert not any(sku in RETIRED for sku, _spot in saved)


async def test_refreshed_prices_override_the_bundled_ones(
    session: aiohttp.ClientSession, store: SqlStore, table: PriceTable
) -> None:
    prices = {**DEFAULT_PRICES, T4: Decimal("0.612")}
    spot = {**DEFAULT_SPOT, V100: Decimal("0.9180")}
    async with FakeRetailPrices(default_items(prices, spot)) as api:
        client = RetailPrices(session, base_url=api.base_url)
        await refresh_prices(client=client, store=store, table=table, region="eastus", now=NOW)

    refreshed = await load_refreshed(table, store)

    t4 = refreshed.get_price("standard_nc4as_t4_v3")
    assert (t4.usd_per_hour, t4.as_of, t4.source) == (Decimal("0.612"), NOW.date(), SOURCE)
    v100_spot = refreshed.get_price("NC6S_V3", spot=True)
    assert (v100_spot.usd_per_hour, v100_spot.spot, v100_spot.source) == (
        Decimal("0.9180"),
        True,
        SOURCE,
    )
    assert refreshed.get_price(A100, spot=True).usd_per_hour == Decimal("0.7345")
    assert (refreshed.as_of, refreshed.source) == (NOW.date(), SOURCE)
    # the retired K80 sizes the API no longer lists keep their bundled price, date and source
    nc6 = refreshed.get_price("Standard_NC6")
    assert nc6 == table.get_price("Standard_NC6")
    assert nc6.usd_per_hour == Decimal("0.90") and nc6.retired
    # the bundled table itself is untouched, and the lookup rules still hold
    assert table.get_price(T4).usd_per_hour == Decimal("0.526")
    assert refreshed.skus() == table.skus()
    with pytest.raises(UserError, match="did you mean Standard_NC24ads_A100_v4"):
        refreshed.get_price("Standard_NC24ads_A100")
    with pytest.raises(UserError, match="eastus only"):
        refreshed.get_price(T4, region="westeurope")


async def test_load_refreshed_with_an_empty_cache_is_the_bundled_table(
    store: SqlStore, table: PriceTable
) -> None:
    assert await load_refreshed(table, store) == table


def test_overrides_skip_other_regions_unknown_sizes_and_zero(table: PriceTable) -> None:
    day = datetime(2026, 11, 1, tzinfo=UTC)
    out = table.with_overrides(
        [
            (T4, "westeurope", False, Decimal("9.99"), day, "elsewhere"),
            ("Standard_NC999", "eastus", False, Decimal("1"), day, "unknown"),
            (V100, "eastus", False, Decimal("0"), day, "zero"),
            (V100, "eastus", True, Decimal("-1"), day, "negative"),
        ]
    )
    assert out == table
    with pytest.raises(UserError, match="no price is known"):
        out.get_price("Standard_NC999")


def test_bundled_spot_keeps_its_own_date_and_source(table: PriceTable) -> None:
    bundled = table.get_price(A100, spot=True)
    out = table.with_overrides([(A100, "East US", False, Decimal("3.70"), NOW, SOURCE)])
    assert out.get_price("nc24ads_a100_v4").usd_per_hour == Decimal("3.70")
    assert out.get_price(A100, spot=True) == bundled
    assert bundled.source != SOURCE


async def test_a_failed_refresh_keeps_the_previous_cache(
    client: RetailPrices, api: FakeRetailPrices, store: SqlStore, table: PriceTable
) -> None:
    await refresh_prices(client=client, store=store, table=table, region="eastus", now=NOW)
    before = await store.load_prices()
    api.fail(500, at=len(api.requests) + 4)  # mid-way through the second refresh
    with pytest.raises(TransientError):
        await refresh_prices(
            client=client, store=store, table=table, region="eastus", now=NOW + timedelta(days=1)
        )
    assert await store.load_prices() == before


async def test_an_answer_without_any_price_is_refused(
    session: aiohttp.ClientSession, store: SqlStore, table: PriceTable
) -> None:
    await store.save_prices([(T4, "eastus", False, Decimal("0.5"))], "earlier", NOW)
    async with FakeRetailPrices([]) as api:
        client = RetailPrices(session, base_url=api.base_url)
        with pytest.raises(BackendError, match="no pay-as-you-go price"):
            await refresh_prices(client=client, store=store, table=table, region="eastus", now=NOW)
    assert len(await store.load_prices()) == 1


async def test_refresh_for_another_region_is_refused(
    client: RetailPrices, api: FakeRetailPrices, store: SqlStore, table: PriceTable
) -> None:
    with pytest.raises(UserError, match="eastus only"):
        await refresh_prices(client=client, store=store, table=table, region="westeurope", now=NOW)
    assert api.requests == []


# ----------------------------------------------------------------------------- errors


async def test_429_is_transient_with_retry_after(
    client: RetailPrices, api: FakeRetailPrices
) -> None:
    api.throttle("7", at=2)
    with pytest.raises(TransientError) as err:
        await client.fetch(region="eastus", skus=[A100, T4])
    assert err.value.retry_after == 7.0
    assert "429" in str(err.value) and "\n" not in str(err.value)
    assert len(api.requests) == 3


async def test_retry_after_as_an_http_date(client: RetailPrices, api: FakeRetailPrices) -> None:
    api.throttle(format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True))
    with pytest.raises(TransientError) as err:
        await client.fetch(region="eastus", skus=[A100])
    assert err.value.retry_after is not None and 100 < err.value.retry_after <= 120


async def test_429_without_retry_after(client: RetailPrices, api: FakeRetailPrices) -> None:
    api.throttle(None)
    with pytest.raises(TransientError) as err:
        await client.fetch(region="eastus", skus=[A100])
    assert err.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient(client: RetailPrices, api: FakeRetailPrices, status: int) -> None:
    api.fail(status)
    with pytest.raises(TransientError, match=str(status)):
        await client.fetch(region="eastus", skus=[A100])


async def test_other_http_errors_are_backend_errors_on_one_line(
    client: RetailPrices, api: FakeRetailPrices
) -> None:
    api.fail(400, b'{"Error":{"Code":"BadRequest","Message":"Invalid OData\\nfilter"}}')
    with pytest.raises(BackendError) as err:
        await client.fetch(region="eastus", skus=[A100])
    assert not isinstance(err.value, TransientError)
    assert str(err.value) == "Azure Retail Prices API: HTTP 400 Bad Request: Invalid OData filter"


@pytest.mark.parametrize(
    "body,complaint",
    [
        (b'{"Items": [', "not JSON"),
        (b"<html>maintenance</html>", "not JSON"),
        (b'{"Items": "none"}', "no Items list"),
        (b"[]", "no Items list"),
        (b'{"Items": [], "NextPageLink": 7}', "NextPageLink is not a string"),
    ],
)
async def test_malformed_answers_are_backend_errors(
    client: RetailPrices, api: FakeRetailPrices, body: bytes, complaint: str
) -> None:
    api.garble(body)
    with pytest.raises(BackendError, match=complaint) as err:
        await client.fetch(region="eastus", skus=[A100])
    assert not isinstance(err.value, TransientError)


@pytest.mark.parametrize(
    "change,complaint",
    [
        ({"retailPrice": "3.673"}, r"Items\[0\]\.retailPrice is not a number"),
        ({"retailPrice": True}, "retailPrice is not a number"),
        ({"effectiveStartDate": "last tuesday"}, "effectiveStartDate is not a date"),
        ({"productName": 7}, "productName is not a string"),
    ],
)
async def test_malformed_items_are_backend_errors(
    session: aiohttp.ClientSession, change: dict[str, object], complaint: str
) -> None:
    async with FakeRetailPrices([{**vm_item(A100, "3.673"), **change}]) as api:
        client = RetailPrices(session, base_url=api.base_url)
        with pytest.raises(BackendError, match=complaint):
            await client.fetch(region="eastus", skus=[A100])


async def test_a_timeout_is_transient(
    session: aiohttp.ClientSession, api: FakeRetailPrices
) -> None:
    client = RetailPrices(session, base_url=api.base_url, timeout=0.2)
    api.hang(10)
    with pytest.raises(TransientError, match="no answer within 0.2 s"):
        await client.fetch(region="eastus", skus=[A100])


async def test_a_refused_connection_is_transient(session: aiohttp.ClientSession) -> None:
    async with FakeRetailPrices() as api:
        url = api.base_url
    client = RetailPrices(session, base_url=url, timeout=2)
    with pytest.raises(TransientError, match="connection failed"):
        await client.fetch(region="eastus", skus=[A100])


async def test_next_page_link_to_another_host_is_not_followed(
    client: RetailPrices, api: FakeRetailPrices
) -> None:
    api.next_link_root = "http://203.0.113.9:8080"
    with pytest.raises(BackendError, match="another host"):
        await client.fetch(region="eastus", skus=[A100])
    assert len(api.requests) == 1


async def test_paging_stops_at_the_page_limit(
    client: RetailPrices, api: FakeRetailPrices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(price_refresh, "MAX_PAGES", 2)
    with pytest.raises(BackendError, match="gave up after 2 pages"):
        await client.fetch(region="eastus", skus=[A100])
    assert len(api.requests) == 2


async def test_the_default_endpoint_is_the_public_api(session: aiohttp.ClientSession) -> None:
    # the only place the real address appears; every test above talks to the local fake
    assert RetailPrices(session).base_url == "https://prices.azure.com/api/retail/prices"
