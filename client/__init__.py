"""Python client of the rlme reward service: `pip install rlme` (httpx + pydantic, no torch).

    from rlme.client import RewardClient

    with RewardClient() as client:  # $RLME_BASE_URL, else http://127.0.0.1:8000
        answer = client.rewards(
            [{"prompt": "What is 2+2?", "response": "4", "reference": "4"}],
            rubric="correctness",
        )
        print(answer.rewards)

Framework adapters (TRL, verl, slime) live in `rlme.client.adapters`.
"""

from ._core import (
    DEFAULT_BASE_URL,
    INITIAL_RETRY_DELAY,
    MAX_RETRIES,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
)
from .client import AsyncRewardClient, RewardClient
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    GatewayTimeoutError,
    InternalServerError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    PermissionDeniedError,
    RateLimitError,
    RLMEError,
    ServiceUnavailableError,
)
from .wire import (
    ChatMessage,
    EvaluatorChoice,
    EvaluatorInfo,
    EvaluatorList,
    Health,
    Item,
    ItemResult,
    MetaQuestion,
    QuestionScore,
    RewardRequest,
    RewardResponse,
    RubricInfo,
    RubricList,
    Usage,
)

__all__ = [
    "RewardClient",
    "AsyncRewardClient",
    "DEFAULT_BASE_URL",
    "MAX_RETRIES",
    "INITIAL_RETRY_DELAY",
    "MAX_RETRY_DELAY",
    "MAX_RETRY_AFTER",
    "RLMEError",
    "ClientClosedError",
    "InvalidInputError",
    "NotReadyError",
    "APIResponseValidationError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RateLimitError",
    "ServiceUnavailableError",
    "GatewayTimeoutError",
    "InternalServerError",
    "ChatMessage",
    "Item",
    "MetaQuestion",
    "EvaluatorChoice",
    "RewardRequest",
    "RewardResponse",
    "ItemResult",
    "QuestionScore",
    "Usage",
    "EvaluatorInfo",
    "EvaluatorList",
    "RubricInfo",
    "RubricList",
    "Health",
]
