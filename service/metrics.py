"""Prometheus metrics, on a registry per app so several apps (tests) never collide."""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_SHORT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def latency_buckets(request_timeout_s: float) -> tuple[float, ...]:
    """The short buckets, then doubling up to the request timeout: a request that waited
    its whole deadline lands in a bucket of its own, not in +Inf."""
    buckets = [b for b in _SHORT_BUCKETS if b < request_timeout_s] or [request_timeout_s / 2]
    while buckets[-1] * 2 < request_timeout_s:
        buckets.append(buckets[-1] * 2)
    return (*buckets, request_timeout_s)


class Metrics:
    def __init__(self, request_timeout_s: float = 300.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # What prometheus_client's default registry has: process (CPU, memory, fds),
        # platform (Python version) and GC collectors.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        latency = latency_buckets(request_timeout_s)
        try:
            version = metadata.version("rlme")
        except metadata.PackageNotFoundError:
            version = "unknown"
        self.build_info = Gauge(
            "rlme_build_info", "1, labelled with the running version.", ["version", "python"], registry=r
        )
        self.build_info.labels(version, platform.python_version()).set(1)
        self.request_latency = Histogram(
            "rlme_request_latency_seconds",
            "HTTP request latency.",
            ["route", "status"],
            buckets=latency,
            registry=r,
        )
        self.in_flight = Gauge("rlme_requests_in_flight", "HTTP requests being served.", registry=r)
        self.queue_wait = Histogram(
            "rlme_queue_wait_seconds",
            "Time a task waited in the batcher's queue before its batch started.",
            ["evaluator"],
            buckets=latency,
            registry=r,
        )
        self.evaluator_up = Gauge(
            "rlme_evaluator_up",
            "1 while the evaluator is loaded and healthy, else 0.",
            ["evaluator"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "rlme_queue_evaluations", "Evaluations waiting in the batcher.", ["evaluator"], registry=r
        )
        self.batch_evaluations = Histogram(
            "rlme_batch_evaluations",
            "Evaluations per engine batch.",
            ["evaluator"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "rlme_batch_seconds",
            "Engine time per batch.",
            ["evaluator"],
            buckets=latency,
            registry=r,
        )
        self.evaluations = Counter(
            "rlme_evaluations",
            "Evaluations scored (rate() gives evaluations/s).",
            ["evaluator"],
            registry=r,
        )
        self.prompt_tokens = Counter("rlme_prompt_tokens", "Prompt tokens scored.", ["evaluator"], registry=r)
        self.cached_prompt_tokens = Counter(
            "rlme_cached_prompt_tokens",
            "Prompt tokens served from a shared prefix.",
            ["evaluator"],
            registry=r,
        )
        self.low_label_mass = Counter(
            "rlme_low_label_mass",
            "Scores whose yes+no label probability fell below the evaluator's min_label_mass.",
            ["evaluator"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "rlme_generated_tokens", "Tokens written by generative judges.", ["evaluator"], registry=r
        )
        self.judgments = Counter(
            "rlme_judgments", "Judgments written (samples).", ["evaluator", "route"], registry=r
        )
        self.judgment_seconds = Histogram(
            "rlme_judgment_seconds",
            "Wall time of a judge request divided by the judgments it wrote.",
            ["evaluator", "route"],
            buckets=latency,
            registry=r,
        )
        self.reloads = Counter(
            "rlme_evaluator_reloads", "Weight reloads (live self).", ["evaluator"], registry=r
        )
        self.replica_up = Gauge(
            "rlme_remote_replica_up",
            "1 while a remote evaluator server is in the pool, 0 while it is out (failed or refused).",
            ["evaluator", "replica"],
            registry=r,
        )
        self.request_shape_rate = Gauge(
            "rlme_remote_request_shape_tokens_per_second",
            "request_shape auto: each shape's measured throughput for the latest batch's kind (median of "
            "its recent batches; prompt tokens a second of batch time; 0 until tried).",
            ["evaluator", "shape"],
            registry=r,
        )
        self.request_shape_used = Gauge(
            "rlme_remote_request_shape_used",
            "request_shape auto: 1 for the shape the latest batch's kind now gets, 0 for the others.",
            ["evaluator", "shape"],
            registry=r,
        )
        self.runs = Gauge(
            "rlme_runs",
            "Monitored training runs in memory per tenant and alarm level (ok, watch, alarm).",
            ["tenant", "alarm"],
            registry=r,
        )
        # Run ids are chosen by callers: label values only where the operator opts in.
        self.run_alarm = Gauge(
            "rlme_run_alarm",
            "Run monitor alarm per training run: 0 ok, 1 watch, 2 alarm (at most monitoring.max_runs "
            "runs; only with monitoring.run_metric_labels).",
            ["tenant", "run"],
            registry=r,
        )
        self.store_broken = Gauge(
            "rlme_store_broken",
            "1 while an optional state file (runs, calibrations) is unusable and left untouched.",
            ["store"],
            registry=r,
        )
        self.run_probes = Counter(
            "rlme_run_probes",
            "Run monitor probes (anchors re-scored, canaries): outcome ok counts probes scored; failed "
            "and skipped count requests whose probes failed or were not tried (queue filling).",
            ["outcome"],
            registry=r,
        )
        self.quota_store_errors = Counter(
            "rlme_quota_store_errors",
            "Quota checks that could not reach the shared store (the request was admitted unchecked).",
            registry=r,
        )
        self.state_store_errors = Counter(
            "rlme_state_store_errors",
            "Operations on the shared state store (state_store: redis) that failed, by what it held "
            "(runs, calibrations): monitoring is degraded to this replica's view until it is back.",
            ["store"],
            registry=r,
        )
        self.state_store_up = Gauge(
            "rlme_state_store_up",
            "1 while the shared state store (state_store: redis) answers, 0 while it does not; "
            "absent with state_store: local.",
            registry=r,
        )
        self.cache_lookups = Counter(
            "rlme_cache_lookups",
            "Reward cache lookups per evaluation: result hit or miss (cache.enabled).",
            ["result"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "rlme_cache_evictions",
            "Results evicted from the in-memory reward cache (size bound).",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "rlme_cache_bytes", "Bytes held by the in-memory reward cache (keys and values).", registry=r
        )
        self.deduplicated = Counter(
            "rlme_deduplicated_evaluations",
            "Evaluations that were identical to another in the same batch and computed once.",
            registry=r,
        )
        self.rejected = Counter(
            "rlme_rejected_requests", "Requests answered with an error.", ["code"], registry=r
        )
        # Per tenant. Tenants come from the configuration, so the label set stays bounded.
        self.tenant_evaluations = Counter(
            "rlme_tenant_evaluations", "Evaluations scored per tenant.", ["tenant"], registry=r
        )
        self.tenant_queued = Gauge(
            "rlme_tenant_queued_evaluations",
            "Evaluations queued or in the engine per tenant.",
            ["tenant"],
            registry=r,
        )
        self.tenant_rejected = Counter(
            "rlme_tenant_rejected_requests",
            "Requests answered with an error per tenant.",
            ["tenant", "code"],
            registry=r,
        )
        self.tenant_latency = Histogram(
            "rlme_tenant_request_latency_seconds",
            "Latency of reward requests per tenant.",
            ["tenant"],
            buckets=latency,
            registry=r,
        )
