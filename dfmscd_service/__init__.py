"""The dfmscd web service: core (settings, database, storage, broker), api (HTTP) and worker (Celery)."""
