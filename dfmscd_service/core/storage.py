"""Which store holds the files: ``get_storage()`` picks the backend from the settings.

The one module that knows both backends: the disk (``storage_local``, the embedded default) and
an S3-compatible bucket (``storage_s3``, when ``DFMSCD_STORAGE_URL=s3://...``). Neither backend
imports the other; what they share (the ``Storage`` interface, errors, key naming) is in
``storage_base``.
"""

from __future__ import annotations

from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.storage_base import Storage
from dfmscd_service.core.storage_local import LocalStorage


def get_storage() -> Storage:
    """The configured store: a bucket when ``storage_url`` is set, else files under ``data_dir``."""
    settings = get_settings()
    if settings.storage_url:
        # Deferred on purpose: storage_s3 imports boto3 (about a second), needed only in S3 mode.
        from dfmscd_service.core.storage_s3 import s3_storage_for

        return s3_storage_for(settings)
    return LocalStorage(settings.storage_dir)
