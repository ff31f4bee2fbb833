"""Read-only routes: health, metrics, evaluators, rubrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rlme.client.wire import ErrorBody, EvaluatorInfo, EvaluatorList, Health, RubricInfo, RubricList
from rlme.service.auth import metrics_reader
from rlme.service.deps import MetricsDep, PoolDep, ScorerDep, SettingsDep

router = APIRouter()


@router.get("/health/live", tags=["ops"])
async def live() -> dict[str, str]:
    """Liveness: 200 while the process serves HTTP, whatever its evaluators do. A probe that
    restarts the pod belongs here; restarting cannot fix an evaluator still loading."""
    return {"status": "ok"}


@router.get("/health/ready", tags=["ops"], responses={503: {"model": Health}})
@router.get("/health", tags=["ops"], responses={503: {"model": Health}})
async def health(pool: PoolDep, scorer: ScorerDep, response: Response) -> Health:
    """Readiness: 200 once every evaluator is loaded and usable; 503 while one loads (a
    remote pool waiting for its servers included: status 'loading') or if one failed
    (status 'error'). `/health` is the same as `/health/ready`. `stores` says whether the
    optional state files are in use; a broken one does not make the service unready."""
    statuses = {name: e.status() for name, e in pool.evaluators.items()}
    stores = scorer.store_statuses()
    if pool.ready and all(status == "ok" for status in statuses.values()):
        return Health(status="ok", evaluators=statuses, stores=stores)
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    failed = any(s != "ok" and not s.startswith("loading") for s in statuses.values())
    return Health(status="error" if failed else "loading", evaluators=statuses, stores=stores)


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    dependencies=[Depends(metrics_reader)],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus exposition format. Needs an admin key or a key with `metrics: true` (the
    metrics name tenants), unless `auth.metrics_public`; run ids appear only with
    `monitoring.run_metric_labels`."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/evaluators", tags=["info"])
async def evaluators(pool: PoolDep, settings: SettingsDep) -> EvaluatorList:
    infos = []
    for evaluator in pool.evaluators.values():
        labels = evaluator.backend.labels if evaluator.loaded else None
        infos.append(
            EvaluatorInfo(
                name=evaluator.name,
                backend=evaluator.config.backend,
                model=evaluator.config.model,
                loaded=evaluator.loaded,
                yes_tokens=list(labels.yes_tokens) if labels else [],
                no_tokens=list(labels.no_tokens) if labels else [],
                label_mass_at_load=evaluator.startup_label_mass,
            )
        )
    return EvaluatorList(default=settings.default_evaluator_name, evaluators=infos)


@router.get("/v1/rubrics", tags=["info"])
async def rubrics(settings: SettingsDep) -> RubricList:
    return RubricList(
        rubrics=[
            RubricInfo(name=name, description=r.description, questions=r.questions)
            for name, r in sorted(settings.all_rubrics().items())
        ]
    )
