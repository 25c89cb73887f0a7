"""Price table, estimates, cost so far: exact Decimal money, never $0 for an unknown size."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.core.errors import UserError
from services.spend.pricing import (
    BUNDLED_PRICES,
    Estimate,
    Price,
    PriceTable,
    cost_so_far,
    estimate_job,
    format_rate,
    format_usd,
    load_price_table,
    money,
)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return load_price_table(BUNDLED_PRICES)


def tiny_table(**skus: dict[str, Any]) -> PriceTable:
    doc = {
        "currency": "USD",
        "region": "eastus",
        "as_of": "2026-01-02",
        "source": "test",
        "skus": skus,
    }
    return PriceTable.from_json(json.dumps(doc))


def row(usd: object, **extra: Any) -> dict[str, Any]:
    return {"usd_per_hour": usd, "gpus": 0, "vcpus": 2, "gpu_model": None, **extra}


# ----------------------------------------------------------------------------- the bundled table

# numbers.md: Azure GPU VM prices, Linux pay-as-you-go, eastus
NUMBERS_MD = {
    "Standard_NC4as_T4_v3": ("0.526", 1),
    "Standard_NC8as_T4_v3": ("0.752", 1),
    "Standard_NC16as_T4_v3": ("1.204", 1),
    "Standard_NC64as_T4_v3": ("4.352", 4),
    "Standard_NC6s_v3": ("3.06", 1),
    "Standard_NC12s_v3": ("6.12", 2),
    "Standard_NC24s_v3": ("12.24", 4),
    "Standard_NC24ads_A100_v4": ("3.673", 1),
    "Standard_NC48ads_A100_v4": ("7.346", 2),
    "Standard_NC96ads_A100_v4": ("14.692", 4),
    "Standard_ND40rs_v2": ("22.032", 8),
    "Standard_ND96asr_v4": ("27.197", 8),
    "Standard_ND96amsr_A100_v4": ("32.768", 8),
    "Standard_ND96isr_H100_v5": ("98.32", 8),
}


@pytest.mark.parametrize("sku,expected", sorted(NUMBERS_MD.items()))
def test_bundled_gpu_prices_match_the_reference(
    table: PriceTable, sku: str, expected: tuple[str, int]
) -> None:
    price = table.get_price(sku)
    assert price.usd_per_hour == Decimal(expected[0])
    assert price.gpus == expected[1]
    assert price.gpu_model
    assert price.sku == sku
    assert not price.retired


@pytest.mark.parametrize(
    "typed",
    ["STANDARD_NC12", "STANDARD_NC24", "STANDARD_NC24R", "STANDARD_D1", "STANDARD_D1_V2",
     "Standard_DS3_v2", "Standard_D2s_v5", "Standard_D4s_v5", "Standard_D8s_v5"],
)  # fmt: skip
def test_legacy_batch_ai_and_cpu_sizes_are_priced(table: PriceTable, typed: str) -> None:
    price = table.get_price(typed)
    assert price.usd_per_hour > 0
    assert price.source


def test_the_table_says_when_and_where_its_numbers_are_from(table: PriceTable) -> None:
    assert table.region == "eastus"
    assert table.currency == "USD"
    assert table.as_of == date(2026, 11, 27)
    assert "Retail Prices API" in table.source
    assert "approximate" in table.get_price("Standard_D4s_v5").source
    assert table.get_price("Standard_NC4as_T4_v3").as_of == table.as_of


def test_k80_nc6_is_the_documented_historical_price_and_retired(table: PriceTable) -> None:
    price = table.get_price("STANDARD_NC6")
    assert price == table.get_price("Standard_NC6") == table.get_price("standard_nc6")
    assert price.usd_per_hour == Decimal("0.90")
    assert price.retired is True
    assert price.gpu_model is not None and "K80" in price.gpu_model
    assert price.as_of == date(2023, 9, 6)


def test_lookup_ignores_case_and_accepts_a_missing_standard_prefix(table: PriceTable) -> None:
    want = table.get_price("Standard_NC24ads_A100_v4")
    assert table.get_price("STANDARD_NC24ADS_A100_V4") == want
    assert table.get_price("  nc24ads_a100_v4 ") == want
    assert want.vcpus == 24


def test_spot_price_where_known(table: PriceTable) -> None:
    spot = table.get_price("Standard_NC24ads_A100_v4", spot=True)
    assert spot.spot is True
    assert spot.usd_per_hour == Decimal("0.7345")
    assert spot.label == "$0.7345/h spot"
    assert table.get_price("Standard_NC24ads_A100_v4").spot is False


def test_unknown_spot_price_is_an_error_not_a_zero(table: PriceTable) -> None:
    with pytest.raises(UserError) as err:
        table.get_price("Standard_NC6s_v3", spot=True)
    message = str(err.value)
    assert "spot" in message and "$3.06/h" in message
    assert "$0" not in message


@pytest.mark.parametrize(
    "typed,suggested",
    [
        ("Standard_NC4as_T4", "Standard_NC4as_T4_v3"),
        ("STANDARD_NC6_v3", "Standard_NC6s_v3"),
        ("Standard_ND96", "Standard_ND96asr_v4"),
        ("Standard_NC24ads_A100", "Standard_NC24ads_A100_v4"),
    ],
)
def test_unknown_size_names_up_to_three_close_matches(
    table: PriceTable, typed: str, suggested: str
) -> None:
    with pytest.raises(UserError) as err:
        table.get_price(typed)
    message = str(err.value)
    assert "\n" not in message
    assert typed in message
    assert suggested in message
    listed = message.split("did you mean ", 1)[1]
    assert listed.count("Standard_") <= 3
    assert "$0" not in message


@pytest.mark.parametrize("typed", ["A100", "foo", "Basic_A0"])
def test_unknown_size_without_neighbours_still_refuses(table: PriceTable, typed: str) -> None:
    with pytest.raises(UserError, match=f"no price is known for VM size '{typed}'") as err:
        table.get_price(typed)
    assert "did you mean" not in str(err.value)  # far-fetched guesses help nobody
    assert "$0" not in str(err.value)


def test_other_regions_are_refused_not_guessed(table: PriceTable) -> None:
    assert table.get_price("Standard_NC6s_v3", region="East US").usd_per_hour == Decimal("3.06")
    with pytest.raises(UserError, match="eastus only"):
        table.get_price("Standard_NC6s_v3", region="westeurope")


def test_rates_are_by_canonical_size(table: PriceTable) -> None:
    rates = table.rates()
    assert rates["Standard_ND96isr_H100_v5"] == Decimal("98.32")
    assert len(rates) == len(table.skus()) >= 25


# ----------------------------------------------------------------------------- arithmetic


def test_estimate_formula_is_exact(table: PriceTable) -> None:
    estimate = estimate_job(table.get_price("Standard_NC24ads_A100_v4"), nodes=4, hours=8)
    assert estimate == Estimate(
        nodes=4,
        usd_per_hour=Decimal("3.673"),
        hours=Decimal(8),
        total=Decimal("117.54"),
        sku="Standard_NC24ads_A100_v4",
    )
    assert estimate.formula() == "4 × Standard_NC24ads_A100_v4 × $3.673/h × 8 h max = $117.54"


def test_estimate_accepts_fractional_hours_and_timedeltas(table: PriceTable) -> None:
    price = table.get_price("Standard_NC6s_v3")
    by_float = estimate_job(price, nodes=2, hours=1.5)
    assert by_float.total == Decimal("9.18")
    assert by_float.formula() == "2 × Standard_NC6s_v3 × $3.06/h × 1.5 h max = $9.18"
    by_delta = estimate_job(price, nodes=2, hours=timedelta(minutes=90))
    assert by_delta.total == by_float.total
    big = estimate_job(table.get_price("Standard_ND96isr_H100_v5"), nodes=4, hours=168)
    assert big.formula().endswith("= $66,071.04")


def test_money_rounds_half_up_to_the_cent() -> None:
    # Banker's rounding would give 0.12 and 2.00; Decimal float-free arithmetic keeps 0.125 exact.
    assert money(Decimal("0.125")) == Decimal("0.13")
    assert money(Decimal("2.005")) == Decimal("2.01")
    assert money(Decimal("117.536")) == Decimal("117.54")
    price = tiny_table(Standard_X1=row(0.125)).get_price("Standard_X1")
    assert estimate_job(price, nodes=1, hours=1).total == Decimal("0.13")


@pytest.mark.parametrize("nodes,hours", [(0, 1), (-1, 1), (1, 0), (1, -2)])
def test_estimate_refuses_empty_jobs(table: PriceTable, nodes: int, hours: int) -> None:
    with pytest.raises(UserError):
        estimate_job(table.get_price("Standard_NC6s_v3"), nodes=nodes, hours=hours)


def test_cost_so_far(table: PriceTable) -> None:
    price = table.get_price("Standard_NC6s_v3")
    assert cost_so_far(price, nodes=2, elapsed=timedelta(minutes=90)) == Decimal("9.18")
    assert cost_so_far(price, nodes=1, elapsed=timedelta(seconds=1)) == Decimal("0.00")
    assert cost_so_far(price, nodes=1, elapsed=timedelta(minutes=1)) == Decimal("0.05")  # 0.051
    assert cost_so_far(price, nodes=3, elapsed=timedelta(-5)) == Decimal("0.00")
    assert cost_so_far(Decimal("3.673"), nodes=4, elapsed=timedelta(hours=8)) == Decimal("117.54")


def test_money_and_rate_formatting() -> None:
    assert format_usd(Decimal("23921")) == "$23,921.00"
    assert format_usd(Decimal("0.004")) == "$0.00"
    assert format_usd(Decimal("-3.1")) == "-$3.10"
    assert format_rate(Decimal("0.9")) == "$0.90/h"
    assert format_rate(Decimal("3.6730")) == "$3.673/h"
    assert format_rate(Decimal("100")) == "$100.00/h"


# ----------------------------------------------------------------------------- the file format


def test_load_price_table_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(BUNDLED_PRICES.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_price_table(path).skus() == load_price_table(str(path)).skus()


def test_prices_keep_their_decimal_digits() -> None:
    text = (
        '{"currency": "USD", "region": "East US", "as_of": "2026-01-02", "source": "t",'
        ' "skus": {"Standard_X1": {"usd_per_hour": 0.1, "gpus": 0, "vcpus": 1,'
        ' "gpu_model": null, "spot_discount": 0.7}}}'
    )
    table = PriceTable.from_json(text)
    assert table.region == "eastus"
    # Not 0.1000000000000000055511151231257827: the JSON digits are kept.
    assert table.get_price("standard_x1").usd_per_hour == Decimal("0.1")
    assert table.get_price("standard_x1", spot=True).usd_per_hour == Decimal("0.03")


def test_per_row_date_and_source_override_the_table() -> None:
    table = tiny_table(Standard_X1=row(1, as_of="2020-05-06", source="historical"))
    price = table.get_price("Standard_X1")
    assert (price.as_of, price.source) == (date(2020, 5, 6), "historical")
    assert isinstance(price, Price)


@pytest.mark.parametrize(
    "skus,complaint",
    [
        ({"Standard_X1": row(0)}, "more than zero"),
        ({"Standard_X1": row(-1)}, "more than zero"),
        ({"Standard_X1": row("1")}, "dollars per hour"),
        ({"Standard_X1": row(1), "STANDARD_X1": row(2)}, "listed twice"),
        ({"Standard_X1": row(1, spot_usd_per_hour=1)}, "below usd_per_hour"),
        ({"Standard_X1": row(1, spot_usd_per_hour=0.5, spot_discount=0.5)}, "not both"),
        ({"Standard_X1": row(1, spot_discount=1)}, "fraction below 1"),
        ({"Standard_X1": row(1, gpus=2)}, "gpu_model is required"),
        ({"Standard_X1": row(1, vcpus=0)}, "vcpus"),
        ({"Standard_X1": row(1, colour="red")}, "unknown key 'colour'"),
        ({}, "skus is empty"),
    ],
)
def test_bad_tables_are_refused(skus: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        tiny_table(**skus)


def test_bad_json_names_line_and_column() -> None:
    with pytest.raises(ValueError, match=r"line 2, column 1"):
        PriceTable.from_json('{"currency": "USD",\n}')
    with pytest.raises(ValueError, match="duplicate key 'currency'"):
        PriceTable.from_json('{"currency": "USD", "currency": "EUR"}')
    with pytest.raises(ValueError, match="currency must be USD"):
        PriceTable.from_json('{"currency": "EUR"}')
