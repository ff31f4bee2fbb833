"""The app factory: settings in, a FastAPI app out, evaluators loading in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import typing
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from rlme.service.auth import KeyRing
from rlme.service.calibration import CalibrationStore, SharedCalibrations
from rlme.service.errors import install_error_handlers
from rlme.service.evaluators import EvaluatorPool
from rlme.service.judging.service import JudgeService
from rlme.service.metrics import Metrics
from rlme.service.middleware import RequestContextMiddleware
from rlme.service.monitoring.monitor import RunMonitor
from rlme.service.monitoring.shared import SharedRuns
from rlme.service.result_cache import ResultCache
from rlme.service.routes import admin, calibrations, compat, info, judges, rewards, runs
from rlme.service.scoring import RewardScorer
from rlme.service.settings import Settings
from rlme.service.tenancy import Tenants

log = logging.getLogger(__name__)

API_DESCRIPTION = """Rewards for RL of language models from an evaluator LLM's answers to
natural-language meta-questions (RLME): `reward = sum_j sum_k v_j w_k log p_yes_jk`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    metrics = Metrics(settings.limits.request_timeout_s)
    # Built here so a bad evaluator config fails at start-up with its ValueError.
    pool = EvaluatorPool(settings.evaluators, settings.cache_dir, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load in the background: /health answers 503 until every evaluator is ready.
        loading = asyncio.create_task(pool.load_all(), name="load-evaluators")
        app.state.loading = loading
        try:
            yield
        finally:
            loading.cancel()
            if app.state.scorer.probes is not None:
                app.state.scorer.probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            # uvicorn has already given requests their shutdown_grace_s: what still runs in an
            # engine has no caller waiting, so it gets a moment, then is aborted.
            await pool.stop(grace_s=min(1.0, settings.shutdown_grace_s))
            await tenants.rates.aclose()
            await cache.aclose()
            monitor.close()
            release_replica_lock()

    app = FastAPI(title="rlme", version="0.1.0", description=API_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pool = pool
    app.state.keyring = KeyRing(settings)
    tenants = Tenants(settings, on_store_error=metrics.quota_store_errors.inc)
    db_path = settings.monitoring.db_path or settings.cache_dir / "runs.sqlite"
    shared_runs, shared_fits = shared_state(settings, db_path, metrics)
    monitor = RunMonitor(settings.monitoring, db_path, metrics, shared_runs)
    fitted = CalibrationStore(
        settings.calibrations_path or settings.cache_dir / "calibrations.json", shared_fits
    )
    if fitted.store_error is not None:
        metrics.store_broken.labels("calibrations").set(1)
    cache = ResultCache(settings.cache, metrics)  # one for every family of routes
    app.state.scorer = RewardScorer(settings, pool, metrics, tenants, monitor, fitted, cache)
    app.state.judge = JudgeService(settings, pool, metrics, tenants, cache)
    install_error_handlers(app)
    app.include_router(rewards.router)
    app.include_router(judges.router)
    app.include_router(compat.router)
    app.include_router(info.router)
    app.include_router(runs.router)
    app.include_router(calibrations.router)
    app.include_router(admin.router)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.limits.max_body_bytes
    )
    return app


def shared_state(
    settings: Settings, db_path: Path, metrics: Metrics
) -> tuple[SharedRuns | None, SharedCalibrations | None]:
    """The run statistics and calibrations every replica shares (`state_store: redis`)."""
    config = settings.state_store
    if config.backend != "redis":
        return None, None
    metrics.state_store_up.set(1)

    def runs_state(up: bool) -> None:
        metrics.state_store_up.set(1 if up else 0)
        if not up:
            metrics.state_store_errors.labels("runs").inc()

    replica = config.replica_id or f"{socket.gethostname()}:{db_path.resolve()}"
    if config.replica_id is None:
        hold_replica_lock(db_path.resolve())
    runs = SharedRuns(
        config.redis_url,
        config.key_prefix + "run:",
        replica,
        config.ttl_days * 86400,
        config.retry_s,
        config.timeout_s,
        runs_state,
        settings.monitoring.max_steps,
    )
    fits = SharedCalibrations(
        config.redis_url,
        config.key_prefix,
        config.retry_s,
        config.timeout_s,
        metrics.state_store_errors.labels("calibrations").inc,
    )
    return runs, fits


_held: list[typing.Any] = []  # the lock files of this process's replicas, held while their app runs


def release_replica_lock() -> None:
    while _held:
        _held.pop().close()


def hold_replica_lock(db_path: Path) -> None:
    """Two processes on one host with one runs file would share a replica id and overwrite
    each other's parts in the shared store: refuse the second."""
    import fcntl

    db_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(db_path.with_name(db_path.name + ".replica-lock"), "a")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ValueError(
            f"state_store: another service process on this host uses {db_path}; give each replica its "
            "own monitoring.db_path (or cache_dir), or a state_store.replica_id of its own"
        ) from None
    _held.append(handle)
