"""A container job's registry login (job.json `containerSettings.imageSourceRegistry`), shared by
both backends: who logs in to which server, and the spec with a Key Vault password filled in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from services.core.errors import UserError
from services.core.ports import LaunchRequest
from services.jobspec.schema import KeyVaultSecretReference

# A value docker's argv takes as one word (not an option, nothing a terminal would act on).
_WORD = re.compile(r"^[^\s\x00-\x1f\x7f-][^\s\x00-\x1f\x7f]{0,254}$")
_WHERE = "containerSettings.imageSourceRegistry"


@dataclass(frozen=True)
class RegistryLogin:
    server: str | None  # None: Docker Hub, as `docker login` without a server
    username: str
    password: str | None = field(default=None, repr=False)  # None until read from Key Vault
    secret: KeyVaultSecretReference | None = None  # where the password is, when in Key Vault


def registry_login(request: LaunchRequest) -> RegistryLogin | None:
    """The login a container job asks for; None when it names no credentials. UserError when the
    server or user name could not be one word of docker's command line."""
    settings = request.spec.properties.container_settings
    if settings is None or settings.image_source_registry.credentials is None:
        return None
    registry = settings.image_source_registry
    creds = registry.credentials
    assert creds is not None
    server = (registry.server_url or "").strip() or None
    for what, value in (("serverUrl", server or ""), ("credentials.username", creds.username)):
        if value and not _WORD.match(value):
            raise UserError(
                f"{_WHERE}.{what} must be one word (no blanks, no leading '-'): "
                "e.g. myregistry.azurecr.io and the registry's user name"
            )
    return RegistryLogin(
        server=server,
        username=creds.username,
        password=creds.password,
        secret=creds.password_secret_reference,
    )


def with_password(request: LaunchRequest, password: str) -> LaunchRequest:
    """The request with the registry password read from Key Vault in place of its reference."""
    settings = request.spec.properties.container_settings
    assert settings is not None and settings.image_source_registry.credentials is not None
    registry = settings.image_source_registry
    assert registry.credentials is not None
    creds = registry.credentials.model_copy(
        update={"password": password, "password_secret_reference": None}
    )
    settings = settings.model_copy(
        update={"image_source_registry": registry.model_copy(update={"credentials": creds})}
    )
    props = request.spec.properties.model_copy(update={"container_settings": settings})
    return replace(request, spec=request.spec.model_copy(update={"properties": props}))
