"""Key Vault references of a job.json (`passwordSecretReference`: {sourceVault.id, secretUrl})
resolved with the bot's own credential, as Batch AI resolved them with its service's identity.

A secretUrl is hostile input: the bot sends its bearer token only to a vault of this cloud's Key
Vault DNS zone that is the one `sourceVault.id` names, so a job file cannot point the bot's token
at a server of its choosing.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.secrets.aio import SecretClient

from services.backends.azure.config import AzureConfig
from services.backends.azure.errors import one_line
from services.core.errors import NotAllowed, TransientError, UserError
from services.core.ports import LaunchRequest
from services.jobspec.schema import KeyVaultSecretReference

_PATH = re.compile(
    r"^/secrets/(?P<name>[0-9A-Za-z-]{1,127})(?:/(?P<version>[0-9A-Za-z]{1,64}))?/?$"
)
_VAULT_ID = re.compile(r"/providers/Microsoft\.KeyVault/vaults/(?P<name>[^/]+)/?$", re.IGNORECASE)


def vault_and_secret(ref: KeyVaultSecretReference, suffix: str, what: str) -> tuple[str, str, str]:
    """(vault URL, secret name, version or "") of a reference; UserError when the secretUrl is
    not a secret of a vault in `suffix` or not the vault `sourceVault.id` names."""
    url = urlsplit(ref.secret_url)
    host = (url.hostname or "").lower()
    match = _PATH.match(url.path)
    usage = (
        f"give https://<vault>.{suffix}/secrets/<name>[/<version>] and the vault's resource id "
        "(/subscriptions/…/providers/Microsoft.KeyVault/vaults/<vault>)"
    )
    if url.scheme != "https" or not host.endswith("." + suffix) or match is None or url.query:
        raise UserError(f"{what}: {ref.secret_url!r} is not a Key Vault secret URL; {usage}")
    vault = _VAULT_ID.search(ref.source_vault.id)
    if vault is None or vault.group("name").lower() != host.split(".", 1)[0]:
        raise UserError(
            f"{what}: sourceVault.id {ref.source_vault.id!r} does not name the vault of "
            f"{ref.secret_url!r}; {usage}"
        )
    base = f"https://{host}" + (f":{url.port}" if url.port else "")
    return base, match.group("name"), match.group("version") or ""


class KeyVaultSecrets:
    """Reads secrets from Key Vault with the bot's credential; one client per vault."""

    def __init__(
        self, config: AzureConfig, credential: AsyncTokenCredential, *, transport: Any = None
    ) -> None:
        self._suffix = config.key_vault_dns_suffix
        self._credential = credential
        # A transport of the composition root's (tests: a loopback vault), else azure-core's own
        # with the configured CA bundle.
        self._options: dict[str, Any] = (
            {"transport": transport}
            if transport is not None
            else {"connection_verify": config.connection_verify}
        )
        self._clients: dict[str, SecretClient] = {}

    async def get(self, ref: KeyVaultSecretReference, what: str) -> str:
        """The secret's value; UserError (one line, no value in it) when it cannot be read."""
        vault, name, version = vault_and_secret(ref, self._suffix, what)
        client = self._clients.get(vault)
        if client is None:
            client = self._clients[vault] = SecretClient(vault, self._credential, **self._options)
        where = f"{what}: Key Vault secret {ref.secret_url}"
        try:
            secret = await client.get_secret(name, version or None)
        except ResourceNotFoundError:
            raise UserError(f"{where} was not found in the vault") from None
        except ClientAuthenticationError as err:
            raise NotAllowed(
                f"{where}: the bot's identity may not read it; give it the Key Vault Secrets "
                f"User role on the vault ({one_line(err, 160)})"
            ) from None
        except (ServiceRequestError, ServiceResponseError) as err:
            raise TransientError(
                f"{where}: the vault did not answer ({one_line(err, 160)})"
            ) from None
        except HttpResponseError as err:
            if err.status_code == 403:
                raise NotAllowed(
                    f"{where}: the bot's identity may not read it; give it the Key Vault "
                    f"Secrets User role on the vault ({one_line(err, 160)})"
                ) from None
            if err.status_code in (429, 500, 502, 503, 504):
                raise TransientError(f"{where}: {one_line(err, 160)}") from None
            raise UserError(f"{where} could not be read ({one_line(err, 160)})") from None
        if not secret.value:
            raise UserError(f"{where} is empty or disabled")
        return secret.value

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


async def with_vault_secrets(request: LaunchRequest, vault: KeyVaultSecrets) -> LaunchRequest:
    """The request with each secret given as a Key Vault reference (`valueSecretReference`)
    read with the bot's credential and put in its place; a UserError (one line, no value)
    when one cannot be read, before anything starts."""
    props = request.spec.properties
    if not any(s.value_secret_reference is not None for s in props.secrets):
        return request
    secrets = []
    for secret in props.secrets:
        ref = secret.value_secret_reference
        if ref is not None:
            value = await vault.get(ref, f"secret {secret.name!r}")
            secret = secret.model_copy(update={"value": value, "value_secret_reference": None})
        secrets.append(secret)
    props = props.model_copy(update={"secrets": secrets})
    return replace(request, spec=request.spec.model_copy(update={"properties": props}))
