"""ROLL adapter: a reward worker in the shape of ROLL's LLM-judge worker, reading rlme's P(yes)
instead of a substring test (alibaba/ROLL).

ROLL sends each reward domain's batch to its worker's `compute_rewards(data: DataProto)`
(roll/pipeline/rlvr/rewards/llm_judge_reward_worker.py): prompts and responses as token
ids in `data.batch`, `data.non_tensor_batch["ground_truth"]`; the worker answers a
DataProto with `token_level_rewards`, `response_level_rewards` and `scores`. Its LLM judge
asks a chat model for "YES"/"NO" and scores 1 when "yes" appears anywhere in the reply;
`RLMERewardWorker` sends the decoded (prompt, response, ground truth) to rlme in one request
per batch and uses the reward (by default log P(yes) summed over the rubric's questions).

    rewards:
      rlme:
        worker_cls: rlme.client.adapters.roll.RLMERewardWorker
        tag_included: [math]           # the dataset tags this domain scores
        world_size: 1                  # one process is plenty: rlme does the work
        model_args: {model_name_or_path: <any; rlme is the judge>}

ROLL has no per-sample mask. Our choice: a sample rlme cannot score (low label mass) gets
the mean reward of the scored samples of its own prompt (its group; else of the batch), so
its advantage is about 0 and it pushes the policy nowhere, and `rlme/failed_fraction` is in
the worker's metrics; a request that fails altogether (service down past the client's
retries, `$RLME_TIMEOUT_S`) raises, so the step fails loudly instead of training on made-up
rewards. Configured like the other adapters ($RLME_BASE_URL, $RLME_API_KEY, $RLME_RUBRIC
or $RLME_QUESTIONS, $RLME_EVALUATORS, $RLME_RUN).

ROLL needs CUDA and Ray to install; without it this module still imports (the worker's
ROLL base class and decorator are then stand-ins) so `score_batch` can be used and tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client import RewardClient
from ..errors import RLMEError
from ..wire import Item
from ._common import Outcome, Scoring, outcomes, timeout_s, to_reference

__all__ = ["RLMERewardWorker", "score_batch", "fill_failed"]

try:  # the real ROLL, where it is installed
    from roll.distributed.executor.worker import Worker as _RollWorker
    from roll.distributed.scheduler.decorator import Dispatch, register
except ImportError:  # pragma: no cover - exercised where ROLL is absent (CPU CI)
    _RollWorker = object
    Dispatch = None

    def register(*_: Any, **__: Any) -> Any:
        return lambda fn: fn


def score_batch(
    client: RewardClient, prompts: Sequence[str], responses: Sequence[str],
    references: Sequence[Any], scoring: Scoring,
) -> tuple[list[float], float]:  # fmt: skip
    """Rewards for a batch in one request, failed samples filled in (`fill_failed`), and the
    failed fraction. Raises RLMEError when the request itself fails."""
    items = [
        Item(prompt=p, response=r, reference=to_reference(g) if scoring.send_reference else None)
        for p, r, g in zip(prompts, responses, references, strict=True)
    ]
    found = outcomes(client.rewards(items, **scoring.request_options()))
    return fill_failed(found, list(prompts)), sum(o.failed for o in found) / max(1, len(found))


def fill_failed(found: Sequence[Outcome], prompts: Sequence[str]) -> list[float]:
    """Each failed sample gets the mean reward of the scored samples of its own prompt (its
    GRPO group: advantage about 0), else of the batch; all failed: the request is as good
    as failed, so raise."""
    scored = [o.reward for o in found if o.reward is not None]
    if not scored:
        raise RLMEError(f"rlme scored none of the {len(found)} samples: {found[0].failure if found else ''}")
    groups: dict[str, list[float]] = {}
    for prompt, outcome in zip(prompts, found, strict=True):
        if outcome.reward is not None:
            groups.setdefault(prompt, []).append(outcome.reward)
    batch_mean = sum(scored) / len(scored)
    filled = []
    for prompt, outcome in zip(prompts, found, strict=True):
        group = groups.get(prompt)
        neutral = sum(group) / len(group) if group else batch_mean
        filled.append(neutral if outcome.reward is None else outcome.reward)
    return filled


class RLMERewardWorker(_RollWorker):  # type: ignore[misc, valid-type]
    """ROLL's reward worker interface: `initialize(pipeline_config)`, `compute_rewards(data)`."""

    def __init__(self, worker_config: Any = None) -> None:
        if _RollWorker is not object:
            super().__init__(worker_config=worker_config)
            self.rank_info.dp_rank = self.rank_info.rank  # as ROLL's own reward workers
            self.rank_info.dp_size = self.rank_info.world_size
        self.worker_config = worker_config
        self.tokenizer: Any = None
        self.client: RewardClient | None = None

    @register(dispatch_mode=getattr(Dispatch, "ONE_TO_ALL", None))
    def initialize(self, pipeline_config: Any) -> None:
        """The actor's tokenizer decodes the batch (as ROLL's LLM-judge worker); one client."""
        from transformers import AutoTokenizer

        if _RollWorker is not object:
            super().initialize(pipeline_config)
        path = pipeline_config.actor_train.model_args.model_name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.client = RewardClient(total_timeout=timeout_s(300.0))

    @register(dispatch_mode=getattr(Dispatch, "DP_MP_COMPUTE", None), clear_cache=False)
    def compute_rewards(self, data: Any) -> Any:
        import torch

        prompts = self.tokenizer.batch_decode(data.batch["prompts"], skip_special_tokens=True)
        responses = self.tokenizer.batch_decode(data.batch["responses"], skip_special_tokens=True)
        references = list(data.non_tensor_batch.get("ground_truth", [None] * len(prompts)))
        assert self.client is not None, "initialize() first"
        rewards, failed = score_batch(self.client, prompts, responses, references, Scoring.from_env())
        scores = torch.tensor(rewards, dtype=torch.float16)
        token_level = torch.zeros_like(data.batch["responses"], dtype=torch.float16)
        output = type(data).from_dict(
            tensors={"token_level_rewards": token_level, "response_level_rewards": scores, "scores": scores}
        )
        output.meta_info = {
            "metrics": {"rlme/failed_fraction": failed, "rlme/reward_mean": float(scores.mean())}
        }
        return output
