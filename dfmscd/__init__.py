"""DF-MSCD: data-free multi-student coevolved distillation, in pure PyTorch.

This package knows nothing of the web: the service in ``app/`` and ``worker/`` wraps it.
"""

__version__ = "0.1.0"
