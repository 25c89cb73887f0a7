"""The SQL store: SQLAlchemy 2 async on SQLite (default) or PostgreSQL, migrated by Alembic."""

from services.store.sql import SqlStore

__all__ = ["SqlStore"]
