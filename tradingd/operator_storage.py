"""Storage for a one-shot operator command: attach to the running daemon's servers (or start
the embedded ones), with a short timeout, and refuse an unmigrated database in one line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tradingd.config import Config, redact_url
from tradingd.secrets import secret_store
from tradingd.storage import Storage, StorageUnavailable, open_storage
from tradingd.storage.migrations import pending_migrations

# An operator command waits this long for a server that is down, then says so (the daemon
# waits as configured: forever by default).
OPERATOR_CONNECT_TIMEOUT = 5.0


class SchemaMissing(StorageUnavailable):
    """The database has pending migrations: an operator command cannot read it yet."""


@asynccontextmanager
async def storage_for(config: Config, *, needs_schema: bool = True) -> AsyncIterator[Storage]:
    """Storage for a one-shot command: attaches to the running daemon's, or starts its own;
    gives up after OPERATOR_CONNECT_TIMEOUT. ``needs_schema``: refuse, in one line, a database
    that has not been migrated."""
    storage = await open_storage(
        config, secrets=secret_store(config), attach=True, connect_timeout=operator_timeout(config)
    )
    try:
        if needs_schema:
            pending = await pending_migrations(storage.pool)
            if pending:
                raise SchemaMissing(
                    f"the database {redact_url(storage.database_url)} is not migrated "
                    f"({len(pending)} migrations pending, from {pending[0]}): run "
                    "`tradingd migrate` or start the daemon"
                )
        yield storage
    finally:
        await storage.close()


def operator_timeout(config: Config) -> float:
    configured = [t for t in (config.database.connect_timeout, config.redis.connect_timeout) if t]
    return min([OPERATOR_CONNECT_TIMEOUT, *configured])
