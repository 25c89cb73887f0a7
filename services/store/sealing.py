"""Secrets at rest: Fernet-sealed in the store with a key kept outside it, opened only at launch."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from services.core.errors import BatchAIError
from services.jobspec.values import map_secrets

PREFIX = "fernet:"  # a sealed value; JSON text never starts so, so a sealed document is told apart
_CHECK = b"batchai-bot secrets key check"
NEW_KEY_HINT = (
    "make one with: python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)


class SecretsKeyError(BatchAIError):
    """SECRETS_KEY is malformed, or does not open the secrets the database holds."""


@dataclass(frozen=True)
class SecretBox:
    """Seals with the current key; opens with it or the previous one (a key being rotated out)."""

    current: Fernet
    previous: Fernet | None = None

    @classmethod
    def from_keys(cls, key: str, previous: str | None = None) -> SecretBox:
        old = None if previous is None else _fernet(previous, "SECRETS_KEY_PREVIOUS")
        return cls(_fernet(key, "SECRETS_KEY"), old)

    @classmethod
    def ephemeral(cls) -> SecretBox:
        """A key of this process only: what the store seals with when given none (tests)."""
        return cls(Fernet(Fernet.generate_key()))

    @property
    def _any(self) -> MultiFernet:
        return MultiFernet([self.current] + ([self.previous] if self.previous else []))

    def seal(self, plain: str) -> str:
        return PREFIX + self.current.encrypt(plain.encode(errors="surrogatepass")).decode()

    def open(self, value: str) -> str:
        """The plain text of a sealed value; a value that was never sealed comes back as it is."""
        if not value.startswith(PREFIX):
            return value
        return self._token(value, self._any.decrypt).decode(errors="surrogatepass")

    def rotate(self, value: str) -> str:
        """The value sealed with the current key (it may be sealed with the previous one)."""
        if not value.startswith(PREFIX):
            return self.seal(value)
        return PREFIX + self._token(value, self._any.rotate).decode()

    def seal_spec(self, text: str) -> str:
        """A job.json with each secret field sealed (text without any comes back unchanged);
        text that is not JSON is sealed whole."""
        return _map_spec(text, self.seal)

    def open_spec(self, text: str) -> str:
        return self.open(text) if text.startswith(PREFIX) else _map_spec(text, self.open)

    def rotate_spec(self, text: str) -> str:
        return self.rotate(text) if text.startswith(PREFIX) else _map_spec(text, self.rotate)

    def check_value(self) -> str:
        """What the store keeps to recognise its key at the next start."""
        return self.seal(_CHECK.decode())

    def recognise(self, check: str) -> bool:
        """True when `check` was sealed with the current key, False with the previous one;
        SecretsKeyError when with neither."""
        token = check.removeprefix(PREFIX).encode()
        try:
            self.current.decrypt(token)
            return True
        except InvalidToken:
            pass
        if self.previous is not None:
            try:
                self.previous.decrypt(token)
                return False
            except InvalidToken:
                pass
        raise SecretsKeyError(
            "SECRETS_KEY does not open the secrets in the database: they were sealed with "
            "another key. Set SECRETS_KEY to that key (or restore the data directory's "
            "secrets-key file); to move to a new key, give the old one as SECRETS_KEY_PREVIOUS"
        )

    def _token(self, value: str, use: Callable[[bytes], bytes]) -> bytes:
        try:
            return use(value.removeprefix(PREFIX).encode())
        except InvalidToken:
            raise SecretsKeyError(
                "a stored secret does not open with SECRETS_KEY or SECRETS_KEY_PREVIOUS"
            ) from None


def _fernet(key: str, name: str) -> Fernet:
    try:
        return Fernet(key.strip().encode())
    except ValueError:
        raise SecretsKeyError(
            f"{name} is not a Fernet key (32 random bytes in url-safe base64); {NEW_KEY_HINT}"
        ) from None


def _map_spec(text: str, change: Callable[[str], str]) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return change(text)
    found = False

    def visit(secret: str) -> str:
        nonlocal found
        found = True
        return change(secret)

    out = map_secrets(data, visit)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")) if found else text
