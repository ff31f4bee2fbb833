"""Wire models of the HTTP contract (v1), shared by the service and the client.

Only pydantic is imported here, so `rlme.client` stays light (no torch). The service
validates requests with these models and answers with them; the client builds requests
and parses answers with the same classes, so the two cannot drift apart. One module per
family, each importing only from those below it:

    base         the strict base model, the limits no server lifts, text that is text
    runs         run monitor reports (GET /v1/runs/{run})
    rewards      POST /v1/rewards                      (base, runs)
    info         health, evaluators, rubrics, errors   (rewards)
    calibration  POST/GET /v1/calibrations             (base, rewards)
    judges       judgments, comparisons, meta-judges   (base)
    compat       OpenRLHF's /get_reward, slime's /slime/reward (base, rewards)
    admin        POST /admin/evaluators/{name}/reload  (base)

`from rlme.client.wire import X` serves every name below.
"""

from rlme.client.wire.admin import ReloadRequest, ReloadResponse
from rlme.client.wire.calibration import Calibration, CalibrationList, CalibrationRequest, LabelledItem
from rlme.client.wire.compat import OpenRLHFRewardRequest, OpenRLHFRewardResponse, SlimeRewardRequest
from rlme.client.wire.info import (
    ErrorBody,
    ErrorDetail,
    EvaluatorInfo,
    EvaluatorList,
    Health,
    RubricInfo,
    RubricList,
)
from rlme.client.wire.judges import (
    Battle,
    ComparisonRequest,
    ComparisonResponse,
    ComparisonResult,
    JudgedItem,
    JudgedItemInput,
    JudgeInfo,
    JudgeList,
    JudgeTemplate,
    JudgeUsage,
    Judgment,
    JudgmentRequest,
    JudgmentResponse,
    MetaJudgmentRequest,
    MetaJudgmentResponse,
    OrderVerdict,
    Pair,
    Provenance,
)
from rlme.client.wire.rewards import (
    ChatMessage,
    EvaluatorChoice,
    Item,
    ItemResult,
    MetaQuestion,
    QuestionScore,
    RewardRequest,
    RewardResponse,
    Usage,
)
from rlme.client.wire.runs import Alarm, QuestionStep, RunReport, RunStep, Signal

__all__ = [
    "Alarm",
    "Battle",
    "Calibration",
    "CalibrationList",
    "CalibrationRequest",
    "ChatMessage",
    "ComparisonRequest",
    "ComparisonResponse",
    "ComparisonResult",
    "ErrorBody",
    "ErrorDetail",
    "EvaluatorChoice",
    "EvaluatorInfo",
    "EvaluatorList",
    "Health",
    "Item",
    "ItemResult",
    "JudgeInfo",
    "JudgeList",
    "JudgeTemplate",
    "JudgeUsage",
    "JudgedItem",
    "JudgedItemInput",
    "Judgment",
    "JudgmentRequest",
    "JudgmentResponse",
    "LabelledItem",
    "MetaJudgmentRequest",
    "MetaJudgmentResponse",
    "MetaQuestion",
    "OpenRLHFRewardRequest",
    "OpenRLHFRewardResponse",
    "OrderVerdict",
    "Pair",
    "Provenance",
    "QuestionScore",
    "QuestionStep",
    "ReloadRequest",
    "ReloadResponse",
    "RewardRequest",
    "RewardResponse",
    "RubricInfo",
    "RubricList",
    "RunReport",
    "RunStep",
    "Signal",
    "SlimeRewardRequest",
    "Usage",
]
