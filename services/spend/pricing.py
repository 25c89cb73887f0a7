"""GPU spend arithmetic: the bundled price table, job estimates and cost so far (pure, Decimal).

The table is data (`manifests/prices.json`), read only through `load_price_table(path)` or
`PriceTable.from_json(text)`. A size the table does not know is a `UserError` naming close
matches, never a price of zero: an approval gate that sees $0 would wave anything through.
Money is `Decimal`, rounded to the cent half-up only where an amount is shown or compared.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final

from services.core.errors import UserError

CENT: Final = Decimal("0.01")
BUNDLED_PRICES: Final = resources.files("manifests") / "prices.json"  # the installed data package
_PREFIX: Final = "standard_"
_MICROS_PER_HOUR: Final = Decimal(3_600_000_000)


@dataclass(frozen=True)
class Price:
    """One node of `sku` per hour (spot or pay-as-you-go), and where the number comes from."""

    sku: str
    usd_per_hour: Decimal
    gpus: int
    gpu_model: str | None
    as_of: date
    source: str
    retired: bool = False
    vcpus: int = 0
    region: str = ""
    spot: bool = False

    @property
    def label(self) -> str:
        """`$3.673/h`, with " spot" when it is a spot price."""
        return format_rate(self.usd_per_hour) + (" spot" if self.spot else "")


@dataclass(frozen=True)
class Estimate:
    """The most a job can cost: nodes × hourly rate × maximum wall-clock hours."""

    nodes: int
    usd_per_hour: Decimal
    hours: Decimal
    total: Decimal
    sku: str = ""
    jobs: int = 1  # a sweep: that many jobs of this estimate each

    def formula(self) -> str:
        """`4 × Standard_NC24ads_A100_v4 × $3.673/h × 8 h max = $117.54`; a sweep's:
        `6 jobs × (1 × Standard_NC6 × $0.90/h × 8 h max = $7.20) = $43.20`"""
        one = (
            f"{self.nodes} × {self.sku} × {format_rate(self.usd_per_hour)} × "
            f"{format_hours(self.hours)} h max = {format_usd(self.per_job)}"
        )
        return one if self.jobs == 1 else f"{self.jobs} jobs × ({one}) = {format_usd(self.total)}"

    @property
    def per_job(self) -> Decimal:
        return self.total if self.jobs == 1 else money(self.total / self.jobs)

    def times(self, jobs: int) -> Estimate:
        """The estimate of `jobs` jobs like this one (a sweep: one approval for all of them)."""
        return replace(self, jobs=jobs, total=money(self.per_job * jobs))


@dataclass(frozen=True)
class PriceEntry:
    """One row of the table as the JSON file gives it."""

    sku: str
    usd_per_hour: Decimal
    spot_usd_per_hour: Decimal | None
    gpus: int
    vcpus: int
    gpu_model: str | None
    as_of: date
    source: str
    spot_source: str | None = None
    retired: bool = False
    spot_as_of: date | None = None  # when the spot price has its own date (a refreshed spot row)


# (sku, region, spot, usd_per_hour, fetched at, source): a row of the refreshed price cache.
PriceOverride = tuple[str, str, bool, Decimal, date, str]


@dataclass(frozen=True)
class PriceTable:
    """Hourly Linux prices for one region, keyed case-insensitively by VM size."""

    region: str
    currency: str
    as_of: date
    source: str
    entries: Mapping[str, PriceEntry]  # by sku_key()

    @classmethod
    def from_json(cls, text: str | bytes) -> PriceTable:
        """Parse and check a price table; a bad file raises ValueError naming the row and field."""
        try:
            data = json.loads(text, parse_float=Decimal, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"price table: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        root = _object(data, "price table")
        currency = _text(root, "currency", "price table")
        if currency != "USD":
            raise ValueError(f"price table: currency must be USD, got {currency!r}")
        region = normalize_region(_text(root, "region", "price table"))
        as_of = _date(root, "as_of", "price table")
        source = _text(root, "source", "price table")
        entries: dict[str, PriceEntry] = {}
        for sku, raw in _object(root.get("skus"), "price table: skus").items():
            entry = _entry(sku, _object(raw, f"skus.{sku}"), as_of, source)
            key = sku_key(sku)
            if key in entries:
                raise ValueError(f"price table: {sku!r} is listed twice (sizes ignore case)")
            entries[key] = entry
        if not entries:
            raise ValueError("price table: skus is empty")
        return cls(region, currency, as_of, source, entries)

    def get_price(self, vm_size: str, *, region: str | None = None, spot: bool = False) -> Price:
        """The hourly price of one node of `vm_size` (`STANDARD_NC6` == `Standard_NC6`)."""
        if region is not None and normalize_region(region) != self.region:
            raise UserError(
                f"the bundled price table covers {self.region} only, not {_shown(region)}"
            )
        entry = self.entries.get(sku_key(vm_size))
        if entry is None:
            raise UserError(self._unknown(vm_size))
        rate, source = entry.usd_per_hour, entry.source
        if spot:
            if entry.spot_usd_per_hour is None:
                raise UserError(
                    f"no spot price is known for {entry.sku} "
                    f"(pay-as-you-go is {format_rate(entry.usd_per_hour)})"
                )
            rate, source = entry.spot_usd_per_hour, entry.spot_source or entry.source
        return Price(
            sku=entry.sku,
            usd_per_hour=rate,
            gpus=entry.gpus,
            gpu_model=entry.gpu_model,
            as_of=(entry.spot_as_of or entry.as_of) if spot else entry.as_of,
            source=source,
            retired=entry.retired,
            vcpus=entry.vcpus,
            region=self.region,
            spot=spot,
        )

    def with_overrides(self, rows: Iterable[PriceOverride]) -> PriceTable:
        """This table with refreshed prices in place of the bundled ones (same size and region).

        Rows for another region, for a size the table does not know (its GPU count and model
        would be missing) or with a rate that is not more than zero are ignored, so a size the
        refresh did not cover keeps its bundled price and nothing ever becomes $0. A refreshed
        spot row sets the spot price; a bundled spot price keeps its own date and source when
        only the pay-as-you-go price is refreshed. The table's `as_of`/`source` become those of
        the newest row applied; with no row applied the table is returned unchanged.
        """
        entries = dict(self.entries)
        newest: tuple[date, str] | None = None
        for sku, region, spot, rate, fetched, source in rows:
            key = sku_key(sku)
            entry = entries.get(key)
            if entry is None or normalize_region(region) != self.region:
                continue
            if not isinstance(rate, Decimal) or not rate.is_finite() or rate <= 0:
                continue
            day = fetched.date() if isinstance(fetched, datetime) else fetched
            if spot:
                entry = replace(entry, spot_usd_per_hour=rate, spot_source=source, spot_as_of=day)
            else:
                if entry.spot_usd_per_hour is not None:
                    entry = replace(
                        entry,
                        spot_source=entry.spot_source or entry.source,
                        spot_as_of=entry.spot_as_of or entry.as_of,
                    )
                entry = replace(entry, usd_per_hour=rate, as_of=day, source=source)
            entries[key] = entry
            if newest is None or day > newest[0]:
                newest = (day, source)
        if newest is None:
            return self
        return replace(self, entries=entries, as_of=newest[0], source=newest[1])

    def skus(self) -> tuple[str, ...]:
        """The VM sizes the table prices, in their canonical spelling, sorted."""
        return tuple(sorted(e.sku for e in self.entries.values()))

    def rates(self) -> dict[str, Decimal]:
        """Pay-as-you-go USD per node-hour by canonical VM size (for dashboards)."""
        return {e.sku: e.usd_per_hour for e in self.entries.values()}

    def _unknown(self, vm_size: str) -> str:
        # Compare without the shared "standard_" so that it does not make everything look close;
        # sizes that extend what was typed (ND96 -> ND96asr_v4) come first.
        by_stem = {key.removeprefix(_PREFIX): e.sku for key, e in self.entries.items()}
        typed = sku_key(vm_size).removeprefix(_PREFIX)
        extended = sorted(stem for stem in by_stem if typed and stem.startswith(typed))
        similar = difflib.get_close_matches(typed, list(by_stem), n=3, cutoff=0.6)
        close = list(dict.fromkeys(extended + similar))[:3]
        message = f"no price is known for VM size {_shown(vm_size)}"
        if close:
            return message + "; did you mean " + _or_list([by_stem[k] for k in close]) + "?"
        nearest = difflib.get_close_matches(typed, list(by_stem), n=3, cutoff=0.0)
        return (
            message
            + f"; the closest of the {len(by_stem)} sizes in the price table are "
            + _or_list([by_stem[k] for k in nearest], word="and")
        )


def load_price_table(path: str | os.PathLike[str] | Traversable) -> PriceTable:
    """Read a price table file (UTF-8 JSON); see `manifests/prices.json`."""
    file = Path(path) if isinstance(path, str | os.PathLike) else path
    return PriceTable.from_json(file.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- arithmetic


def estimate_job(price: Price, *, nodes: int, hours: Decimal | int | float | timedelta) -> Estimate:
    """The cost ceiling of a job: `nodes` nodes for at most `hours` hours."""
    if nodes < 1:
        raise UserError(f"a job needs at least one node, got {nodes}")
    return estimate_capacity(price, nodes=nodes, hours=hours)


# Managed data disks are billed per provisioned GiB-month whether used or not: list prices of
# the 1 TiB tiers (P30 $135.17, E30 $76.80, S30 $40.96 a month), per GiB. An unknown SKU is
# priced as Premium: an estimate must never be lower than the bill.
DISK_USD_PER_GB_MONTH: dict[str, Decimal] = {
    "premium_lrs": Decimal("0.132"),
    "standardssd_lrs": Decimal("0.075"),
    "standard_lrs": Decimal("0.040"),
}
HOURS_PER_MONTH = Decimal(730)


def disks_usd_per_hour(count: int, size_gb: int, sku: str) -> Decimal:
    """What `count` managed disks of `size_gb` GiB cost an hour."""
    rate = DISK_USD_PER_GB_MONTH.get(sku.lower(), DISK_USD_PER_GB_MONTH["premium_lrs"])
    return rate * count * size_gb / HOURS_PER_MONTH


def estimate_capacity(
    price: Price, *, nodes: int, hours: Decimal | int | float | timedelta
) -> Estimate:
    """What `nodes` nodes (none or more) cost over `hours`, busy or idle."""
    span = to_hours(hours)
    if span <= 0:
        raise UserError("the maximum run time must be longer than zero")
    total = money(price.usd_per_hour * nodes * span)
    return Estimate(
        nodes=nodes, usd_per_hour=price.usd_per_hour, hours=span, total=total, sku=price.sku
    )


def cost_so_far(price: Price | Decimal, *, nodes: int, elapsed: timedelta) -> Decimal:
    """What `nodes` nodes have cost over `elapsed`, to the cent (never negative)."""
    rate = price.usd_per_hour if isinstance(price, Price) else price
    if elapsed <= timedelta(0) or nodes <= 0:
        return money(Decimal(0))
    return money(rate * nodes * to_hours(elapsed))


def to_hours(value: Decimal | int | float | timedelta) -> Decimal:
    """Hours as a Decimal; floats go through their shortest repr (1.1 stays 1.1)."""
    if isinstance(value, timedelta):
        return Decimal(value // timedelta(microseconds=1)) / _MICROS_PER_HOUR
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


def money(amount: Decimal) -> Decimal:
    """To the cent, half-up: 117.536 -> 117.54."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def format_usd(amount: Decimal) -> str:
    """`$117.54`, `$23,921.00`, `-$3.10`."""
    cents = money(amount)
    return f"-${-cents:,}" if cents < 0 else f"${cents:,}"


def format_rate(rate: Decimal) -> str:
    """An hourly rate as published: `$3.673/h`, `$0.90/h`, `$98.32/h` (at least two decimals)."""
    shown = rate.normalize()
    exponent = shown.as_tuple().exponent  # an int for finite values
    if isinstance(exponent, int) and exponent > -2:
        shown = shown.quantize(CENT)
    return f"${shown:,}/h"


def format_hours(hours: Decimal) -> str:
    """`8`, `1.5`, `0.25` (at most two decimals, no trailing zeros)."""
    shown = hours.quantize(CENT, rounding=ROUND_HALF_UP).normalize()
    return f"{shown:f}"


def sku_key(vm_size: str) -> str:
    """The table's lookup key: lower case, `Standard_` added when omitted (`nc6` -> NC6)."""
    key = vm_size.strip().lower()
    return key if key.startswith(_PREFIX) else _PREFIX + key


def normalize_region(region: str) -> str:
    """`East US` -> `eastus`."""
    return "".join(region.split()).lower()


# ----------------------------------------------------------------------------- parsing


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"price table: duplicate key {key!r}")
        out[key] = value
    return out


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return value


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key} must be a non-empty string")
    return value


def _date(data: dict[str, Any], key: str, where: str) -> date:
    try:
        return date.fromisoformat(_text(data, key, where))
    except ValueError:
        raise ValueError(f"{where}: {key} must be a date such as 2026-11-27") from None


def _count(data: dict[str, Any], key: str, where: str, *, minimum: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {key} must be a whole number >= {minimum}")
    return value


def _rate(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(f"{where}: must be a number of dollars per hour")
    rate = Decimal(value)
    if not rate.is_finite() or rate <= 0:
        raise ValueError(f"{where}: must be more than zero")
    return rate


_ENTRY_KEYS: Final = frozenset(
    {
        "usd_per_hour",
        "spot_usd_per_hour",
        "spot_discount",
        "spot_source",
        "gpus",
        "vcpus",
        "gpu_model",
        "as_of",
        "source",
        "retired",
    }
)


def _entry(sku: str, raw: dict[str, Any], as_of: date, source: str) -> PriceEntry:
    where = f"skus.{sku}"
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    rate = _rate(raw.get("usd_per_hour"), f"{where}.usd_per_hour")
    spot = _spot(raw, rate, where)
    gpu_model = raw.get("gpu_model")
    if gpu_model is not None and not isinstance(gpu_model, str):
        raise ValueError(f"{where}: gpu_model must be a string or null")
    gpus = _count(raw, "gpus", where, minimum=0)
    if gpus and not gpu_model:
        raise ValueError(f"{where}: gpu_model is required when gpus > 0")
    retired = raw.get("retired", False)
    if not isinstance(retired, bool):
        raise ValueError(f"{where}: retired must be true or false")
    spot_source = raw.get("spot_source")
    if spot_source is not None and not isinstance(spot_source, str):
        raise ValueError(f"{where}: spot_source must be a string")
    return PriceEntry(
        sku=sku,
        usd_per_hour=rate,
        spot_usd_per_hour=spot,
        gpus=gpus,
        vcpus=_count(raw, "vcpus", where, minimum=1),
        gpu_model=gpu_model,
        as_of=_date(raw, "as_of", where) if "as_of" in raw else as_of,
        source=_text(raw, "source", where) if "source" in raw else source,
        spot_source=spot_source,
        retired=retired,
    )


def _spot(raw: dict[str, Any], rate: Decimal, where: str) -> Decimal | None:
    price, discount = raw.get("spot_usd_per_hour"), raw.get("spot_discount")
    if price is not None and discount is not None:
        raise ValueError(f"{where}: give spot_usd_per_hour or spot_discount, not both")
    if discount is not None:
        fraction = _rate(discount, f"{where}.spot_discount")
        if fraction >= 1:
            raise ValueError(f"{where}.spot_discount: must be a fraction below 1 (0.7 = 70 % off)")
        return rate * (1 - fraction)
    if price is None:
        return None
    spot = _rate(price, f"{where}.spot_usd_per_hour")
    if spot >= rate:
        raise ValueError(f"{where}.spot_usd_per_hour: must be below usd_per_hour")
    return spot


def _shown(text: str) -> str:
    """User input inside a one-line message: quoted, escaped, bounded."""
    return repr(text[:64] + ("…" if len(text) > 64 else ""))


def _or_list(items: list[str], *, word: str = "or") -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]
