"""What every process does before serving: data directories, then the schema at head."""

from __future__ import annotations

from dfmscd_service.core.migrate import upgrade_head
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.storage_local import remove_stale_temp_files


def prepare(migrate: bool | None = None) -> None:
    """Idempotent and safe to run from several processes at once (the upgrade is locked)."""
    settings = get_settings()
    settings.ensure_dirs()

    # What a crashed API or worker left half-written is never a stored object: drop it.
    remove_stale_temp_files([settings.tmp_dir, settings.storage_dir], settings.stale_temp_seconds)
    if settings.migrate_on_start if migrate is None else migrate:
        upgrade_head(settings.resolved_database_url)
