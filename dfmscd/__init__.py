"""DF-MSCD: data-free multi-student coevolved distillation, in pure PyTorch.

This package knows nothing of the web: the service in ``dfmscd_service/`` wraps it.
"""

__version__ = "0.1.0"
