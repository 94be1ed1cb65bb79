"""The FastAPI application: ``create_app()`` (uvicorn: ``dfmscd_service.api.main:create_app --factory``)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import dfmscd
from dfmscd_service.api.dashboard import mount_dashboard
from dfmscd_service.api.docs_ui import mount_docs
from dfmscd_service.api.http.body_limit import BodySizeLimitMiddleware
from dfmscd_service.api.http.errors import CatchAllMiddleware, install_error_handlers
from dfmscd_service.api.reads import read_threads
from dfmscd_service.api.reads.fast_reads import FastReads
from dfmscd_service.api.routes import (
    architectures,
    downloads,
    evaluation_sets,
    evaluations,
    events,
    health,
    jobs,
    teachers,
    webhooks,
)
from dfmscd_service.api.services import torch_pool
from dfmscd_service.core.settings import get_settings
from dfmscd_service.core.startup import prepare

log = logging.getLogger("dfmscd.api")

DESCRIPTION = """Distill one trained image classifier (the teacher) into several smaller students at
once, without the teacher's training data (DF-MSCD). Upload a teacher, create a job, follow its
events, download the students (safetensors, ONNX, TorchScript, INT8 ONNX; each verified), read their
report, and evaluate them on labelled images of your own (reporting only). Every endpoint but the health probes needs
`Authorization: Bearer <api key>`; errors answer `{"error": {"code", "message"}}`."""


# The event loop to run the API on (`uvicorn --loop asyncio`; `dfmscd serve` passes it). Not uvloop:
# its libuv (>= 1.45) accepts one new connection per loop iteration, and when the fast reads keep
# the loop busy an iteration serves every waiting request first, so under 200 connections some
# were accepted only seconds later (wrk p99 3.8 s, socket timeouts; asyncio accepts them all at
# once: p99 150-220 ms on the same machine; docs/reliability.md, "A lean API", uvloop).
EVENT_LOOP = "asyncio"


def _warn_if_uvloop() -> None:
    loop = asyncio.get_running_loop()
    if type(loop).__module__.startswith("uvloop"):
        log.warning("running on uvloop: under load it accepts new connections one per loop iteration, so they "
                    "can wait seconds; run uvicorn with --loop %s (docs/reliability.md, \"A lean API\")", EVENT_LOOP)


def _freeze_startup_heap() -> None:
    """Move the ~165k objects of the imported framework out of the collector's reach.

    Under load a full collection walked them all (23 pauses of up to 145 ms in 40 s of wrk, 2.5 s in
    all); frozen, only what requests allocate is scanned (docs/reliability.md, "A lean API", gc.freeze).
    """
    gc.collect()
    gc.freeze()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    _warn_if_uvloop()
    # The DB pool is sized from this (dfmscd_service/core/db.py): one connection per thread can never run out.
    anyio.to_thread.current_default_thread_limiter().total_tokens = get_settings().api_threads
    await run_in_threadpool(prepare)
    await app.state.fast_reads.start()  # after the migrations: PostgreSQL's triggers are in place
    # No torch here: the zoo, teacher checks and exports live in the torch pool (api/services/torch_pool.py),
    # whose children start now in the background, so the web process stays small (docs/reliability.md).
    if get_settings().api_torch_warm:
        torch_pool.warm()
        architectures.prefetch_names()
    _freeze_startup_heap()
    yield
    await app.state.fast_reads.stop()
    await run_in_threadpool(architectures.stop_background)
    await run_in_threadpool(torch_pool.shutdown)
    await run_in_threadpool(read_threads.shutdown)


def create_app() -> FastAPI:
    app = FastAPI(
        title="dfmscd",
        version=dfmscd.__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,  # served by mount_docs from vendored assets (no CDN)
        redoc_url=None,  # ReDoc has no vendored copy: off rather than loading a CDN
    )
    app.state.fast_reads = FastReads()  # started by the lifespan (api/reads/fast_reads.py)
    mount_docs(app, "dfmscd")
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=get_settings().max_json_body_bytes)
    app.add_middleware(CatchAllMiddleware)
    for module in (health, teachers, jobs, events, downloads, evaluation_sets, evaluations, architectures, webhooks):
        app.include_router(module.router)
    mount_dashboard(app)  # last: `/` and `/static` only, never in front of an API route
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn dfmscd_service.api.main:app` (as in docker-compose.yml) gets an application built on first use.
    if name == "app":
        global _app
        try:
            return _app
        except NameError:
            _app = create_app()
            return _app
    raise AttributeError(name)
