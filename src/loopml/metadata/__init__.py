"""Metadata store: SQLAlchemy 2 tables on SQLite (WAL) or PostgreSQL, migrated by Alembic."""

from loopml.metadata.db import Database

__all__ = ["Database"]
