"""Read-only routes: health, metrics, evaluators, rubrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rlme.client.wire import EvaluatorInfo, EvaluatorList, Health, RubricInfo, RubricList
from rlme.service.deps import MetricsDep, PoolDep, SettingsDep

router = APIRouter()


@router.get("/health", tags=["ops"], responses={503: {"model": Health}})
async def health(pool: PoolDep, response: Response) -> Health:
    """200 once every evaluator is loaded; 503 while loading or if one failed to load."""
    statuses = {name: e.status() for name, e in pool.evaluators.items()}
    if pool.ready and all(status == "ok" for status in statuses.values()):
        return Health(status="ok", evaluators=statuses)
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    failed = any(s not in ("ok", "loading") for s in statuses.values())
    return Health(status="error" if failed else "loading", evaluators=statuses)


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus exposition format."""
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
