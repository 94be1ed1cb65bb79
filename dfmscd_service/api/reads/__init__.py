"""The cached read path: the job poll and the list pages answered from cached bytes while the
change epoch stands still (``fast_reads``), else on a read thread (``job_reads``, ``teacher_reads``).
Imports ``http/`` and the shared modules at the top of ``api/``; never ``routes/`` or ``services/``."""
