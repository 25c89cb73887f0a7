"""Which Key Vaults a job may name. A Key Vault reference in a job.json (a secret's
`valueSecretReference`, a registry's `passwordSecretReference`, a share's
`accountKeySecretReference`) is read with the bot's own identity, so without a rule any member
could read any secret that identity can: the configured vaults, each for the channels whose jobs
may read it (`KEY_VAULTS`), decide, at submit, for every transport."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from services.core.errors import NotAllowed, UserError
from services.jobspec.schema import KeyVaultSecretReference

ANY_CHANNEL = "*"


def parse_vaults(text: str) -> dict[str, frozenset[str]]:
    """`teamvault:C0TEAM|C0ML,opsvault` -> {"teamvault": {C0TEAM, C0ML}, "opsvault": {*}}:
    a vault alone is readable from every channel."""
    vaults: dict[str, frozenset[str]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, _, channels = entry.partition(":")
        ids = frozenset(c.strip() for c in channels.split("|") if c.strip())
        vaults[name.strip().lower()] = ids or frozenset({ANY_CHANNEL})
    return vaults


def vault_of(ref: KeyVaultSecretReference) -> str:
    """The vault a reference's secretUrl points at (its host's first label)."""
    host = (urlsplit(ref.secret_url).hostname or "").lower()
    return host.split(".", 1)[0]


@dataclass(frozen=True)
class VaultPolicy:
    vaults: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def check(
        self,
        refs: Iterable[tuple[str, KeyVaultSecretReference]],
        *,
        channel: str | None,
        is_admin: bool,
    ) -> None:
        """Refuse (one line) a reference to a vault not configured, or configured for other
        channels; admins (and the console) may use every configured vault."""
        for what, ref in refs:
            vault = vault_of(ref)
            if not vault:
                raise UserError(f"{what}: {ref.secret_url!r} is not a Key Vault secret URL")
            allowed = self.vaults.get(vault)
            if allowed is None:
                raise NotAllowed(
                    f"{what}: Key Vault {vault} is not one this bot reads for jobs; an admin "
                    "lists the vaults jobs may read in KEY_VAULTS"
                )
            if ANY_CHANNEL in allowed or is_admin or (channel is not None and channel in allowed):
                continue
            raise NotAllowed(f"{what}: Key Vault {vault} is not readable by jobs of this channel")
