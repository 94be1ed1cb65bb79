"""torchvision classification models, adapted to 1-3 channels and small inputs. Never pretrained."""

from __future__ import annotations

import torch.nn as nn


def classification_models() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def create_tv_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    raise NotImplementedError("filled in by the model-zoo work")
