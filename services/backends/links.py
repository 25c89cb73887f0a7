"""Signed, expiring download links for files the bot serves itself (the local share)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from services.core.errors import NotAllowed
from services.models import FileLocation

# No longer token can arrive: aiohttp refuses request lines over 8,190 bytes. Checked here as well
# so that no caller of verify() decodes or hashes a larger one.
MAX_TOKEN_CHARS = 8 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class LinkSigner:
    """HMAC-SHA256 over (share, path, expiry): a link names exactly one file until it expires."""

    secret: bytes
    base_url: str  # e.g. http://127.0.0.1:8080/files

    def sign(self, loc: FileLocation, expires_at: datetime) -> str:
        claims = json.dumps(
            {"s": loc.share, "p": loc.path, "e": int(expires_at.timestamp())},
            separators=(",", ":"),
        ).encode()
        token = f"{_b64(claims)}.{_b64(self._mac(claims))}"
        name = quote(loc.path.rsplit("/", 1)[-1], safe="")  # `|`, `>`, `?` would end the link
        return f"{self.base_url.rstrip('/')}/{token}/{name}"

    def verify(self, token: str, *, now: datetime | None = None) -> FileLocation:
        """The file a token grants; NotAllowed when it was tampered with or has expired."""
        if len(token) > MAX_TOKEN_CHARS:  # refused before decoding or hashing anything
            raise NotAllowed("malformed link")
        try:
            body, mac = token.split(".", 1)
            claims_raw = _unb64(body)
            if not hmac.compare_digest(_unb64(mac), self._mac(claims_raw)):
                raise NotAllowed("link signature does not match")
            claims = json.loads(claims_raw)
            share, path, expiry = str(claims["s"]), str(claims["p"]), int(claims["e"])
        except NotAllowed:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise NotAllowed("malformed link") from err
        if (now or datetime.now(UTC)).timestamp() >= expiry:
            raise NotAllowed("link expired")
        return FileLocation(share, path)

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self.secret, data, hashlib.sha256).digest()
