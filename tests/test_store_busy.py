"""A store whose connections are all busy answers "try again", not an error to give up on."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from services.core.errors import TransientError
from services.store.sealing import SecretBox
from services.store.unit import SqlUnitOfWork


async def test_no_free_connection_is_a_transient_error(tmp_path: Path) -> None:
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}", pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    try:
        async with engine.connect():  # the only connection, held
            with pytest.raises(TransientError, match="database is busy"):
                async with SqlUnitOfWork(engine, SecretBox.ephemeral()):
                    pass
        async with SqlUnitOfWork(engine, SecretBox.ephemeral()) as uow:  # free again: works
            assert uow.jobs is not None
    finally:
        await engine.dispose()
