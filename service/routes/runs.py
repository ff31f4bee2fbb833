"""GET /v1/runs/{run}: what the run monitor saw of a training run, its signals and alarm."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from rlme.client.wire import ErrorBody, RunReport
from rlme.client.wire_runs import RUN_ID_PATTERN
from rlme.service.auth import PrincipalDep
from rlme.service.errors import NotFound
from rlme.service.run_page import CSP, render

router = APIRouter(tags=["runs"])


@router.get("/v1/runs/{run}", responses={404: {"model": ErrorBody}})
async def run_report(
    request: Request, who: PrincipalDep, run: str = Path(pattern=RUN_ID_PATTERN)
) -> RunReport:
    """Per-step statistics of the run's rewards, the hacking signals and the alarm.

    A run id names a run, not a tenant: every tenant sees its statistics, but the samples
    (the policy's text) only of the steps its own requests tagged; admins see all."""
    monitor = request.app.state.scorer.monitor
    report = monitor.report(run, None if who.admin else who.tenant) if monitor is not None else None
    if report is None:
        raise NotFound(f"no run {run!r}: tag reward requests with `run` (and `step`) to monitor one")
    return report


@router.get("/runs/{run}", response_class=HTMLResponse, responses={404: {"model": ErrorBody}})
async def run_page(
    request: Request, who: PrincipalDep, run: str = Path(pattern=RUN_ID_PATTERN)
) -> HTMLResponse:
    """The run's page for a person: alarm, signals, per-step plots, the highest-rewarded
    responses and the canaries (server-rendered HTML with inline SVG; no scripts)."""
    report = await run_report(request, who, run)
    headers = {"content-security-policy": CSP, "x-content-type-options": "nosniff"}
    return HTMLResponse(render(report), headers=headers)
