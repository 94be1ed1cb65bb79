"""Model zoo: importing this package registers every built-in architecture."""

from dfmscd.models.registry import (
    count_parameters,
    create_model,
    is_model,
    list_models,
    register_model,
)

# Architecture modules register themselves on import.
from dfmscd.models import resnet_cifar  # noqa: F401,E402

__all__ = ["count_parameters", "create_model", "is_model", "list_models", "register_model"]
