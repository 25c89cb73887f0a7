"""Signed download links: one file, until expiry; tampering is refused."""

from datetime import UTC, datetime, timedelta

import pytest

from services.backends.links import LinkSigner
from services.core.errors import NotAllowed
from services.models import FileLocation

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SIGNER = LinkSigner(b"k" * 32, "http://127.0.0.1:8080/files")
LOC = FileLocation("quickstart", "jobs/myjob/outputs/model/model.npz")


def token_of(url: str) -> str:
    return url.removeprefix("http://127.0.0.1:8080/files/").split("/")[0]


def test_round_trip_names_the_file() -> None:
    url = SIGNER.sign(LOC, NOW + timedelta(hours=1))
    assert url.endswith("/model.npz")
    assert SIGNER.verify(token_of(url), now=NOW) == LOC


def test_expired_link_is_refused() -> None:
    url = SIGNER.sign(LOC, NOW + timedelta(minutes=5))
    with pytest.raises(NotAllowed, match="expired"):
        SIGNER.verify(token_of(url), now=NOW + timedelta(minutes=5))


@pytest.mark.parametrize("position", [0, 10, -1, -10])
def test_tampered_token_is_refused(position: int) -> None:
    token = token_of(SIGNER.sign(LOC, NOW + timedelta(hours=1)))
    chars = list(token)
    chars[position] = "A" if chars[position] != "A" else "B"
    with pytest.raises(NotAllowed):
        SIGNER.verify("".join(chars), now=NOW)


def test_other_key_is_refused() -> None:
    token = token_of(SIGNER.sign(LOC, NOW + timedelta(hours=1)))
    with pytest.raises(NotAllowed):
        LinkSigner(b"x" * 32, "http://x/files").verify(token, now=NOW)


@pytest.mark.parametrize("token", ["", "abc", "a.b", "....", "e30.AAAA"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(NotAllowed):
        SIGNER.verify(token, now=NOW)
