"""GET /v1/runs/{run}: what the run monitor saw of a training run, its signals and alarm."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from rlme.client.wire import ErrorBody, RunReport
from rlme.client.wire.runs import RUN_ID_PATTERN
from rlme.service.auth import PrincipalDep
from rlme.service.errors import Forbidden, NotFound
from rlme.service.monitoring.page import CSP, render

router = APIRouter(tags=["runs"])


TenantQuery = Annotated[
    str | None,
    Query(max_length=128, description="Admins only: whose run to read (default: the caller's tenant)."),
]


@router.get("/v1/runs/{run}", responses={403: {"model": ErrorBody}, 404: {"model": ErrorBody}})
async def run_report(
    request: Request,
    who: PrincipalDep,
    run: str = Path(pattern=RUN_ID_PATTERN),
    tenant: TenantQuery = None,
) -> RunReport:
    """Per-step statistics of the run's rewards, the hacking signals, the alarm and samples.

    A run belongs to the tenant whose requests tagged it: a caller reads its own tenant's run
    of that id (another tenant's run of the same id is another run, never shown). Admins
    read any tenant's run with `?tenant=`."""
    if tenant is not None and tenant != who.tenant and not who.admin:
        raise Forbidden(f"tenant {who.tenant!r} may read only its own runs; `tenant` is for admin keys")
    monitor = request.app.state.scorer.monitor
    owner = tenant or who.tenant
    report = monitor.report(run, owner) if monitor is not None else None
    if report is None:
        raise NotFound(
            f"tenant {owner!r} has no run {run!r}: tag reward requests with `run` (and `step`) to monitor one"
        )
    return report


@router.get(
    "/runs/{run}",
    response_class=HTMLResponse,
    responses={403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def run_page(
    request: Request,
    who: PrincipalDep,
    run: str = Path(pattern=RUN_ID_PATTERN),
    tenant: TenantQuery = None,
) -> HTMLResponse:
    """The run's page for a person: alarm, signals, per-step plots, the highest-rewarded
    responses and the canaries (server-rendered HTML with inline SVG; no scripts)."""
    report = await run_report(request, who, run, tenant)
    headers = {"content-security-policy": CSP, "x-content-type-options": "nosniff"}
    return HTMLResponse(render(report), headers=headers)
