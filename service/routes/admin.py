"""Management endpoints: admin keys only."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from rlme.client.wire import ErrorBody
from rlme.client.wire_base import _Wire
from rlme.service.auth import AdminDep
from rlme.service.deps import PoolDep
from rlme.service.errors import InvalidRequest, NotFound

router = APIRouter(prefix="/admin", tags=["admin"])


class ReloadRequest(_Wire):
    model: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="New weights: a model folder or .gguf visible to the service; "
        "default: reload the configured path (e.g. after overwriting it in place).",
    )


class ReloadResponse(BaseModel):
    evaluator: str
    model: str
    generation: int = Field(description="Counts reloads since start.")


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
