"""Model zoo: importing this package registers every built-in architecture."""

from dfmscd.models.registry import (
    check_model_arguments,
    count_parameters,
    create_model,
    is_model,
    list_models,
    register_model,
)

# Architecture modules register themselves on import.
from dfmscd.models import lenet, mobilenetv2, resnet_cifar, shufflenetv2, vgg, wrn  # noqa: F401,E402

__all__ = ["check_model_arguments", "count_parameters", "create_model", "is_model", "list_models", "register_model"]
