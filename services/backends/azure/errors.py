"""azure-core errors -> the project's error tree, at the boundary (one place)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from services.core.errors import (
    BackendError,
    BatchAIError,
    Conflict,
    NotAllowed,
    NotFound,
    QuotaError,
    TransientError,
)

QUOTA_CODES = {"OperationNotAllowed", "QuotaExceeded"}
CAPACITY_CODES = {
    "SkuNotAvailable",
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
}
THROTTLED = {408, 429, 500, 502, 503, 504}
_SECRETISH = re.compile(r"(sig|AccountKey|password|key)=[^&\s;\"']+", re.IGNORECASE)


def error_code(err: HttpResponseError) -> str | None:
    code = getattr(getattr(err, "error", None), "code", None)
    return code or getattr(err, "error_code", None)


def one_line(err: BaseException, limit: int = 300) -> str:
    """The service's message on one line, without anything that looks like a credential."""
    message = getattr(getattr(err, "error", None), "message", None) or str(err)
    text = " ".join(message.split())
    text = _SECRETISH.sub(lambda m: f"{m.group(1)}=***", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after(err: HttpResponseError) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def translate(err: Exception, what: str) -> BatchAIError:
    """Map an azure-core error raised while doing `what` ("create scale set c1") to our tree."""
    if isinstance(err, BatchAIError):
        return err
    if isinstance(err, ClientAuthenticationError):
        return NotAllowed(f"{what}: Azure refused the credential ({one_line(err)})")
    if isinstance(err, ResourceNotFoundError):
        return NotFound(f"{what}: not found")
    if isinstance(err, (ServiceRequestError, ServiceResponseError)):
        return TransientError(f"{what}: Azure did not answer ({one_line(err)})")
    if isinstance(err, HttpResponseError):
        code = error_code(err)
        status = err.status_code or 0
        if status in (401, 403) or code in {"AuthorizationFailed", "AuthenticationFailed"}:
            return NotAllowed(f"{what}: not permitted ({code or status})")
        if code in QUOTA_CODES and "quota" in one_line(err).lower():
            return QuotaError(f"{what}: {one_line(err)}")
        if code in CAPACITY_CODES:
            return QuotaError(f"{what}: Azure has no capacity for this size now ({code})")
        if status in THROTTLED:
            return TransientError(f"{what}: Azure answered {status}", retry_after=retry_after(err))
        if status == 404:
            return NotFound(f"{what}: not found")
        if status == 409:
            return Conflict(f"{what}: {one_line(err)}")
        return BackendError(f"{what}: {code or status}: {one_line(err)}")
    return BackendError(f"{what}: {type(err).__name__}: {one_line(err)}")


@asynccontextmanager
async def azure_errors(what: str) -> AsyncIterator[None]:
    """`async with azure_errors("resize c1"):` re-raises azure-core errors as ours."""
    try:
        yield
    except BatchAIError:
        raise
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as err:
        raise translate(err, what) from err
