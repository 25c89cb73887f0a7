"""The data directory and the keys kept in it: the bot's user's alone (0700 and 0600)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from bot.config import Settings
from services.store.sealing import SecretBox, SecretsKeyError

log = logging.getLogger(__name__)


def link_secret(settings: Settings) -> bytes:
    """The configured key, or one made once and kept in the data dir (links survive restarts)."""
    if settings.link_secret is not None:
        return settings.link_secret.get_secret_value().encode()
    path = settings.batchai_data_dir / "link-secret"
    return kept_key(path, lambda: secrets.token_hex(32)).encode()


def secret_box(settings: Settings) -> SecretBox:
    """SECRETS_KEY (and SECRETS_KEY_PREVIOUS), or a key made once and kept in the data dir."""
    key, previous = settings.secrets_key, settings.secrets_key_previous
    try:
        return SecretBox.from_keys(
            key.get_secret_value()
            if key is not None
            else kept_key(settings.batchai_data_dir / "secrets-key", new_fernet_key),
            None if previous is None else previous.get_secret_value(),
        )
    except SecretsKeyError as err:
        raise SystemExit(f"batchai-bot: {err}") from None


def new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def kept_key(path: Path, make: Callable[[], str]) -> str:
    """The key in `path`, made by `make` on first use; the file is the owner's alone (0600)."""
    private_dir(path.parent)
    try:  # created with its final mode: never readable by others, not even for a moment
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        tighten(path, 0o600)
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(make())
    return path.read_text().strip()


def private_dir(path: Path) -> None:
    """The data directory: made 0700; one an older version made looser is tightened."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    tighten(path, 0o700)


def tighten(path: Path, mode: int) -> None:
    if path.stat().st_mode & 0o077:
        path.chmod(mode)
        log.warning("tightened %s to mode %04o (others could read it)", path, mode)
