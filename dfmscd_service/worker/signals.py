"""Worker process hooks: migrate at start, sweep for orphans, deliver webhooks, fresh DB connections per child."""

from __future__ import annotations

import logging

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from dfmscd_service.core.db import dispose_engines
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.startup import prepare
from dfmscd_service.worker.sweeper import Sweeper
from dfmscd_service.worker.webhooks import WebhookDeliverer

log = logging.getLogger("dfmscd.worker")
_sweeper = None
_deliverer = None


@worker_init.connect
def _on_worker_init(**_kwargs: object) -> None:
    prepare()
    if get_settings().preload_torch:
        # Deferred on purpose (torch), and import only: CUDA initialises lazily, on first use,
        # which happens in the job's child.
        import dfmscd.engine  # noqa: F401
        import dfmscd.io  # noqa: F401
        from dfmscd.models import list_models

        list_models()  # imports torchvision once, here, instead of in every child
        # The exports at a job's end (ONNX, ONNX Runtime's quantizer, TorchScript): seconds of imports
        # that every job's child would otherwise pay again. Import only: no session is made here.
        import dfmscd.deploy  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
        import torch.onnx  # noqa: F401


@worker_process_init.connect
def _on_child_init(**_kwargs: object) -> None:
    # The forked child must not share the parent's pooled DB connections.
    dispose_engines(close=False)


@worker_ready.connect
def _on_worker_ready(**_kwargs: object) -> None:
    global _sweeper, _deliverer
    _sweeper = Sweeper(get_settings().sweep_seconds)
    _sweeper.start()
    _deliverer = WebhookDeliverer()  # the webhook outbox, delivered from this (main) process
    _deliverer.start()
    log.info("dfmscd worker ready; sweeping for orphaned jobs every %.0f s", get_settings().sweep_seconds)


@worker_shutdown.connect
def _on_worker_shutdown(**_kwargs: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()
    if _deliverer is not None:
        _deliverer.stop()
