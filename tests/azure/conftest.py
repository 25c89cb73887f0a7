"""Fixtures for the azure backend: both fakes started, a backend and its share wired to them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.backends.azure.backend import AzureBackend
from services.backends.azure.files import AzureShare
from tests.azure.rig import JOB_SHARE, AzureRig, azure_rig
from tests.contract import JOB_SCRIPT, SCRIPT_PATH


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[AzureRig]:
    async with azure_rig(tmp_path) as r:
        script = r.files.create_share(JOB_SHARE) / SCRIPT_PATH
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(JOB_SCRIPT)
        yield r


@pytest.fixture
async def share(rig: AzureRig) -> AsyncIterator[AzureShare]:
    s = rig.share()
    yield s
    await s.aclose()


@pytest.fixture
async def backend(rig: AzureRig, share: AzureShare) -> AsyncIterator[AzureBackend]:
    b = rig.backend(share)
    yield b
    await b.aclose()
