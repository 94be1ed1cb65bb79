"""The domain work behind the routes: creating jobs, receiving and checking teachers, exports,
and the torch pool that does the torch work. Imports ``http/`` and the shared modules at the top
of ``api/``; never ``routes/`` or ``reads/``."""
