"""Dependencies injected into routes (full-stack-fastapi-template's deps.py style)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rlme.service.evaluators import EvaluatorPool
from rlme.service.judging.service import JudgeService
from rlme.service.metrics import Metrics
from rlme.service.scoring import RewardScorer
from rlme.service.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_pool(request: Request) -> EvaluatorPool:
    pool: EvaluatorPool = request.app.state.pool
    return pool


def get_scorer(request: Request) -> RewardScorer:
    scorer: RewardScorer = request.app.state.scorer
    return scorer


def get_judge(request: Request) -> JudgeService:
    judge: JudgeService = request.app.state.judge
    return judge


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[EvaluatorPool, Depends(get_pool)]
ScorerDep = Annotated[RewardScorer, Depends(get_scorer)]
JudgeDep = Annotated[JudgeService, Depends(get_judge)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
