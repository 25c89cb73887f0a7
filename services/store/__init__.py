"""The SQL store: SQLAlchemy 2 async on SQLite (default) or PostgreSQL, migrated by Alembic;
`SqlStore.unit()` is the unit of work of services/core/ports.py."""

from services.store.sql import SqlStore
from services.store.unit import SqlUnitOfWork

__all__ = ["SqlStore", "SqlUnitOfWork"]
