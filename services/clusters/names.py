"""Cluster and admin user names that Azure accepts, checked before anything is created."""

from __future__ import annotations

from services.core.errors import UserError

# The osProfile.adminUsername values the Compute API refuses (its documented "Disallowed values").
DISALLOWED_ADMIN_NAMES = frozenset(
    {
        "administrator", "admin", "user", "user1", "test", "user2", "test1", "user3", "admin1",
        "1", "123", "a", "actuser", "adm", "admin2", "aspnet", "backup", "console", "david",
        "guest", "john", "owner", "root", "server", "sql", "support", "support_388945a0", "sys",
        "test2", "test3", "user4", "user5",
    }
)  # fmt: skip


def check_cluster_name(name: str) -> None:
    """A scale-set name begins with a letter or digit and ends with one or `_` (Azure's rule)."""
    if not name[:1].isalnum() or not (name[-1:].isalnum() or name.endswith("_")):
        raise UserError(
            f"cluster name {name!r} must begin with a letter or digit and end with a letter, "
            "digit or _ (Azure's scale-set naming rule)"
        )


def check_admin_name(name: str) -> None:
    """Refuse an admin user name the Compute API disallows (admin, root, john, ...)."""
    if name.strip().lower() in DISALLOWED_ADMIN_NAMES:
        raise UserError(
            f"admin user name {name!r} is one Azure disallows (admin, administrator, root, "
            "owner, backup, sql, user1, …); pick another"
        )
