"""Where the library's own migrations live, and the names that tie them into a service's history.

mainspring ships the tables it needs itself (``change_log`` now; the outbox and inbox later) as an Alembic
branch labelled :data:`LIBRARY_BRANCH`, kept in :data:`LIBRARY_VERSIONS`. Every service's migration
environment lists that folder as a second *version location* next to its own ``versions/`` folder, so
the service's history has two independent branches: ``mainspring@head`` and the service's own
(``app@head``). ``upgrade heads`` applies both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["LIBRARY_BRANCH", "LIBRARY_TABLES", "LIBRARY_VERSIONS", "SERVICE_BRANCH", "TEMPLATES"]

#: The branch label of the library's migrations (``mainspring db upgrade mainspring@head``).
LIBRARY_BRANCH: Final = "mainspring"

#: The branch label given to a service's first revision (``mainspring db downgrade app@base``).
SERVICE_BRANCH: Final = "app"

#: Tables created by the library's migrations. A service's autogenerate leaves them alone: it neither
#: creates them in the service's branch (they are in ``mainspring.db.Base.metadata``) nor drops them.
LIBRARY_TABLES: Final[frozenset[str]] = frozenset(
    {
        "change_log",
        "inbox",
        "ms_api_key",
        "ms_recovery_code",
        "ms_refresh_family",
        "ms_refresh_token",
        "ms_totp_replay",
        "outbox",
    }
)

#: The folder holding the library's revision files (one Alembic version location).
LIBRARY_VERSIONS: Final[Path] = Path(__file__).resolve().parent / "versions"

#: The templates ``mainspring db init`` writes into a service's migrations folder.
TEMPLATES: Final[Path] = Path(__file__).resolve().parent / "templates"
