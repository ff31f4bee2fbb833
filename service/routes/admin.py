"""Management endpoints: admin keys only."""

from __future__ import annotations

from fastapi import APIRouter

from rlme.client.wire import ErrorBody, ReloadRequest, ReloadResponse
from rlme.service.auth import AdminDep
from rlme.service.deps import PoolDep
from rlme.service.errors import InvalidRequest, NotFound

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post(
    "/evaluators/{name}/reload",
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
async def reload_evaluator(name: str, body: ReloadRequest, pool: PoolDep, who: AdminDep) -> ReloadResponse:
    """Load new weights for an evaluator without dropping requests (RLME's live-self mode)."""
    evaluator = pool.get(name)
    if evaluator is None:
        raise NotFound(f"no evaluator {name!r}; configured: {sorted(pool.evaluators)}")
    try:
        await evaluator.reload(body.model)
    except Exception as exc:  # any load failure: the old weights keep serving
        raise InvalidRequest(
            f"could not reload {name!r} from {body.model or evaluator.config.model!r}; it keeps serving "
            f"its current weights: {type(exc).__name__}: {exc}"
        ) from exc
    return ReloadResponse(evaluator=name, model=evaluator.config.model, generation=evaluator.generation)
