"""What a hostile caller sends, through the real HTTP server (uvicorn on 127.0.0.1) with API
keys for two tenants and an admin: every case gets a right answer or a clear JSON 4xx.

Each case here was a defect once (issue 21): a tenant reading and poisoning another's run,
/metrics listing run ids to anyone, lone surrogates and 2**70 giving 500s, a chunked body
past the limit answered 400, a 100,000-character stop string, control tokens as labels,
admin reloads that accepted typos and broke on a bogus model folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from rlme.service.auth import new_key

from support import ThreadedServer

pytestmark = [pytest.mark.model, pytest.mark.e2e]

QUESTIONS = [{"id": "polite", "text": "Is the response polite?"}]
ITEM = {"prompt": "Say hi.", "response": "Hello, friend!"}
REWARD = {"items": [ITEM], "questions": QUESTIONS}
JUDGMENT = {"items": [ITEM], "judge": "additive_5", "max_tokens": 4}


class Keys:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.config: list[dict[str, Any]] = []
        roles = [("team-a", False, False), ("team-b", False, False), ("ops", True, False)]
        for tenant, admin, metrics in [*roles, ("scraper", False, True)]:  # (tenant, admin, metrics)
            key, digest = new_key()
            self.values[tenant] = key
            self.config.append({"tenant": tenant, "sha256": digest, "admin": admin, "metrics": metrics})

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.values[tenant]}"}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def server(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    auth = {"keys": keys.config, "allow_anonymous": False}
    monitoring = {"db_path": str(tmp_path_factory.mktemp("hostile") / "runs.sqlite"), "canary_rate": 0}
    with ThreadedServer(auth=auth, monitoring=monitoring) as server:
        yield server


def post(server: ThreadedServer, path: str, body: Any, tenant: str = "team-a") -> httpx.Response:
    """`body` as JSON the way Python writes it: a lone surrogate as its escape, "\\ud800"."""
    keys: Keys = server.keys  # type: ignore[attr-defined]
    headers = {**keys.headers(tenant), "content-type": "application/json"}
    return httpx.post(f"{server.url}{path}", content=json.dumps(body), headers=headers, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def _keys_on_server(server: ThreadedServer, keys: Keys) -> None:
    server.keys = keys  # type: ignore[attr-defined]


def assert_error(answer: httpx.Response, status: int, code: str, *words: str) -> None:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error["message"]


# --- tenancy ----------------------------------------------------------------------------


def test_a_tenant_can_neither_poison_nor_read_another_tenants_run(server: ThreadedServer, keys: Keys) -> None:
    mine = {"prompt": "Capital of Peru?", "response": "Lima, team-a's secret answer."}
    assert (
        post(server, "/v1/rewards", {**REWARD, "items": [mine], "run": "secret-run", "step": 1}).status_code
        == 200
    )
    poison = [{"prompt": "x", "response": f"poison {i}"} for i in range(3)]
    tagged = {**REWARD, "items": poison, "run": "secret-run", "step": 1}
    assert post(server, "/v1/rewards", tagged, tenant="team-b").status_code == 200

    a = httpx.get(f"{server.url}/v1/runs/secret-run", headers=keys.headers("team-a")).json()
    assert [s["items"] for s in a["steps"]] == [1]  # team-b's items never entered team-a's run
    assert all("poison" not in s["response"] for s in a["samples"])
    b = httpx.get(f"{server.url}/v1/runs/secret-run", headers=keys.headers("team-b")).json()
    assert [s["items"] for s in b["steps"]] == [3]  # team-b got a run of its own
    assert all("secret" not in s["response"] for s in b["samples"])
    page = httpx.get(f"{server.url}/runs/secret-run", headers=keys.headers("team-b")).text
    assert "secret answer" not in page

    other = httpx.get(f"{server.url}/v1/runs/secret-run?tenant=team-a", headers=keys.headers("team-b"))
    assert_error(other, 403, "forbidden", "own runs")
    admin = httpx.get(f"{server.url}/v1/runs/secret-run?tenant=team-a", headers=keys.headers("ops"))
    assert admin.json() == a
    assert_error(httpx.get(f"{server.url}/v1/runs/secret-run", headers=keys.headers("ops")), 404, "not_found")


def test_metrics_need_a_key_and_never_name_a_run(server: ThreadedServer, keys: Keys) -> None:
    post(server, "/v1/rewards", {**REWARD, "run": "hidden-run-id", "step": 0})
    assert_error(httpx.get(f"{server.url}/metrics"), 401, "unauthorized")
    assert_error(
        httpx.get(f"{server.url}/metrics", headers=keys.headers("team-b")), 403, "forbidden", "/metrics"
    )
    exported = httpx.get(f"{server.url}/metrics", headers=keys.headers("ops"))
    assert exported.status_code == 200
    assert "hidden-run-id" not in exported.text and "secret-run" not in exported.text
    assert 'rlme_runs{alarm="ok",tenant="team-a"}' in exported.text
    # a key with `metrics: true` scrapes, and is no admin
    scraped = httpx.get(f"{server.url}/metrics", headers=keys.headers("scraper"))
    assert scraped.status_code == 200 and 'rlme_runs{alarm="ok",tenant="team-a"}' in scraped.text
    reload = httpx.post(
        f"{server.url}/admin/evaluators/default/reload", json={}, headers=keys.headers("scraper"), timeout=60
    )
    assert_error(reload, 403, "forbidden")


def test_operators_can_open_metrics_and_name_runs_in_them(keys: Keys, tmp_path: Path) -> None:
    auth = {"keys": keys.config, "allow_anonymous": False, "metrics_public": True}
    monitoring = {"db_path": str(tmp_path / "runs.sqlite"), "canary_rate": 0, "run_metric_labels": True}
    with ThreadedServer(auth=auth, monitoring=monitoring) as server:
        server.keys = keys  # type: ignore[attr-defined]
        for step in (0, 1):  # the alarm is judged once a step has closed
            assert (
                post(server, "/v1/rewards", {**REWARD, "run": "named-run", "step": step}).status_code == 200
            )
        exported = httpx.get(f"{server.url}/metrics")  # no key: the operator opened it
    assert exported.status_code == 200
    assert 'rlme_run_alarm{run="named-run",tenant="team-a"}' in exported.text, [
        line for line in exported.text.splitlines() if "rlme_run" in line
    ]


# --- text that is not text, numbers that are not numbers ----------------------------------

SURROGATE = "\ud800"
ROUTES_WITH_TEXT: list[tuple[str, dict[str, Any], str]] = [
    (
        "/v1/rewards",
        {"items": [{"prompt": "hi", "response": SURROGATE}], "questions": QUESTIONS},
        "items.0.response",
    ),
    (
        "/v1/rewards",
        {"items": [ITEM], "questions": [{"id": "q", "text": "ok?" + SURROGATE}]},
        "questions.0.text",
    ),
    ("/get_reward", {"query": ["hi" + SURROGATE], "prompts": ["hi"]}, "query"),
    ("/slime/reward", {"prompt": SURROGATE, "response": "x"}, "prompt"),
    ("/v1/judgments", {**JUDGMENT, "items": [{"prompt": "hi", "response": SURROGATE}]}, "items.0.response"),
    (
        "/v1/comparisons",
        {"pairs": [{"prompt": "p", "response_a": SURROGATE, "response_b": "b"}]},
        "response_a",
    ),
    ("/v1/meta-judgments", {"prompt": "p", "response": "r", "judgments": ["a", SURROGATE]}, "judgments"),
    ("/v1/judgments", {**JUDGMENT, "stop": [SURROGATE]}, "stop"),
]


@pytest.mark.parametrize(("path", "body", "field"), ROUTES_WITH_TEXT)
def test_a_lone_surrogate_is_a_422_that_names_its_field(
    server: ThreadedServer, path: str, body: dict[str, Any], field: str
) -> None:
    raw = json.dumps(body)  # ensure_ascii writes the lone surrogate as the escape "\ud800"
    assert "\\ud800" in raw
    keys: Keys = server.keys  # type: ignore[attr-defined]
    headers = {**keys.headers("ops"), "content-type": "application/json"}
    answer = httpx.post(f"{server.url}{path}", content=raw, headers=headers, timeout=60)
    assert_error(answer, 422, "invalid_request", field, "surrogate")


def test_calibration_text_with_a_surrogate_is_a_422(server: ThreadedServer) -> None:
    items = [{"prompt": "p", "response": SURROGATE if i == 3 else "r", "label": i % 2 == 0} for i in range(8)]
    answer = post(server, "/v1/calibrations", {"items": items, "questions": QUESTIONS}, tenant="ops")
    assert_error(answer, 422, "invalid_request", "items.3.response", "surrogate")


@pytest.mark.parametrize("name", ["", SURROGATE, "x" * 100_000, 2**70])
def test_a_bad_evaluator_name_is_a_422_not_a_500(server: ThreadedServer, name: object) -> None:
    # "" was found by CI's schemathesis run: it passed the optional field and broke building
    # the evaluator choice; the others are what a hostile caller sends next
    items = [{"prompt": "p", "response": "r", "label": i % 2 == 0} for i in range(8)]
    body = {"items": items, "questions": QUESTIONS, "evaluator": name}
    assert_error(post(server, "/v1/calibrations", body, tenant="ops"), 422, "invalid_request", "evaluator")
    judged = post(server, "/v1/judgments", {**JUDGMENT, "evaluator": name})
    assert_error(judged, 422, "invalid_request", "evaluator")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/judgments", {**JUDGMENT, "seed": 2**70}, "seed"),
        ("/v1/judgments", {**JUDGMENT, "seed": -1}, "seed"),
        ("/v1/rewards", {**REWARD, "run": "r", "step": 2**63}, "step"),
        ("/v1/rewards", {**REWARD, "run": "r", "step": 10**30}, "step"),
        ("/v1/judgments", {**JUDGMENT, "samples": 2**70}, "samples"),
        ("/v1/rewards", {**REWARD, "questions": [{**QUESTIONS[0], "weight": 1e300}]}, "weight"),
    ],
)
def test_integers_and_weights_out_of_range_are_422s(
    server: ThreadedServer, path: str, body: dict[str, Any], field: str
) -> None:
    assert_error(post(server, path, body), 422, "invalid_request", field)


def test_nan_and_infinity_literals_are_422s(server: ThreadedServer) -> None:
    keys: Keys = server.keys  # type: ignore[attr-defined]
    headers = {**keys.headers("team-a"), "content-type": "application/json"}
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = {**REWARD, "questions": [{**QUESTIONS[0], "weight": 12345.5}]}
        raw = json.dumps(body).replace("12345.5", literal)
        answer = httpx.post(f"{server.url}/v1/rewards", content=raw, headers=headers, timeout=60)
        assert_error(answer, 422, "invalid_request", "weight")


# --- bodies -----------------------------------------------------------------------------


def test_a_chunked_body_past_the_limit_gets_the_same_413(server: ThreadedServer, keys: Keys) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        yield b'{"items": ['
        for _ in range(400):
            yield b'{"prompt": "' + b"x" * 1000 + b'", "response": "y"},'
        yield b"]}"

    answer = httpx.post(
        f"{server.url}/v1/rewards", content=chunks(), headers=keys.headers("team-a"), timeout=60
    )
    assert "content-length" not in answer.request.headers
    assert_error(answer, 413, "payload_too_large", "bytes")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),  # deeper than any parser recurses
        (b'{"items": [{"prompt": "\xff\xfe", "response": "x"}], "rubric": "correctness"}', "invalid_json"),
        (b'{"items": [', "invalid_request"),  # truncated: the JSON error names where
    ],
)
def test_bodies_that_are_not_json_get_a_json_error(
    server: ThreadedServer, keys: Keys, raw: bytes, code: str
) -> None:
    headers = {**keys.headers("team-a"), "content-type": "application/json"}
    answer = httpx.post(f"{server.url}/v1/rewards", content=raw, headers=headers, timeout=60)
    assert answer.status_code in (400, 422) and answer.json()["error"]["code"] == code, answer.text


# --- what reaches generation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"stop": ["x" * 100_000]}, ("stop", "64")),
        ({"stop": ["a", "b", "c", "d", "e"]}, ("stop",)),
        ({"template": {"system_prompt": "s", "template": "x" * 9000}}, ("template",)),
    ],
)
def test_caller_strings_that_reach_generation_are_bounded(
    server: ThreadedServer, change: dict[str, Any], words: tuple[str, ...]
) -> None:
    body = {**JUDGMENT, **change}
    if "template" in change:
        del body["judge"]
    assert_error(post(server, "/v1/judgments", body), 422, "invalid_request", *words)


def test_a_control_token_is_never_a_verdict_label(server: ThreadedServer) -> None:
    template = {
        "kind": "pairwise",
        "system_prompt": "You compare two answers.",
        "template": "{prompt}\nA: {response_a}\nB: {response_b}\nWhich is better?",
        "cue": "Verdict:",
        "labels": ["<|im_end|>", "B"],
    }
    body = {"pairs": [{"prompt": "p", "response_a": "a", "response_b": "b"}], "template": template}
    assert_error(post(server, "/v1/comparisons", body), 422, "invalid_request", "special token")


# --- admin --------------------------------------------------------------------------------


def test_admin_reload_refuses_typos_empty_models_and_keeps_serving_on_a_bogus_folder(
    server: ThreadedServer, tmp_path: Path
) -> None:
    before = post(server, "/v1/rewards", REWARD).json()["rewards"]
    reload = "/admin/evaluators/default/reload"
    assert_error(post(server, reload, {"modle": "x"}, tenant="ops"), 422, "invalid_request", "modle")
    assert_error(post(server, reload, {"model": ""}, tenant="ops"), 422, "invalid_request", "model")
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "config.json").write_text('{"model_type": "no-such-architecture", "hidden_size": "big"}')
    assert_error(
        post(server, reload, {"model": str(bogus)}, tenant="ops"), 422, "invalid_request", "current weights"
    )
    assert_error(post(server, reload, {}, tenant="team-a"), 403, "forbidden")
    assert server.app.state.pool.evaluators["default"].generation == 0
    assert post(server, "/v1/rewards", REWARD).json()["rewards"] == before  # the old weights still serve


def test_framework_routes_refuse_unknown_fields(server: ThreadedServer) -> None:
    answer = post(server, "/slime/reward", {"prompt": "p", "response": "r", "lable": "4"})
    assert_error(answer, 422, "invalid_request", "lable")
    openrlhf = {"query": ["p r"], "prompts": ["p"], "metas": [{"source": "gsm8k"}]}
    assert post(server, "/get_reward", openrlhf).status_code == 200  # OpenRLHF 0.11 sends metas


# --- fuzzing what the body fuzz (test_fuzz_hostile.py) does not reach: path segments, query
# parameters, credentials and the admin route, with keys on


def _segment(raw: bytes) -> str:
    """Any bytes as one percent-encoded path segment (invalid UTF-8 and NUL included)."""
    return "".join(f"%{b:02X}" for b in raw) or "%20"


hostile_bytes = st.one_of(
    st.binary(min_size=1, max_size=40),
    # (at most 5,000 bytes: two segments percent-encoded stay under httpx's 64 KiB URL limit)
    st.sampled_from([b"\xed\xa0\x80", b"\x00", b"..", b"secret-run", b"A" * 5_000, "é".encode()]),
)
credentials = st.one_of(
    st.sampled_from(["team-a", "team-b", "ops", None]),  # a tenant's key, an admin's, none
    st.sampled_from(["Bearer", "Basic dGVhbTph", "Bearer " + "k" * 10_000, "bearer  x y", "Bearer team-a"]),
)


@st.composite
def keyed_requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, Any]:
    run, tenant = _segment(draw(hostile_bytes)), _segment(draw(hostile_bytes))
    kind = draw(st.sampled_from(["run", "page", "calibrations", "metrics", "reload"]))
    who = draw(credentials)
    if kind == "reload":
        name = draw(st.one_of(st.just("default"), hostile_bytes.map(_segment)))
        model = draw(
            st.one_of(hostile_bytes.map(lambda b: b.decode("utf-8", "surrogateescape")), st.integers())
        )
        body = json.dumps({"model": model}).encode()
        return "POST", f"/admin/evaluators/{name}/reload", body, who
    path = {"run": f"/v1/runs/{run}", "page": f"/runs/{run}", "calibrations": "/v1/calibrations",
            "metrics": "/metrics"}[kind]  # fmt: skip
    if draw(st.booleans()):
        path += f"?tenant={tenant}"
    return "GET", path, None, who


def _credentials(keys: Keys, who: Any) -> dict[str, str]:
    if who in keys.values:
        return keys.headers(who)
    return {} if who is None else {"Authorization": who}


@hypothesis.settings(
    max_examples=50, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
)
@hypothesis.given(request=keyed_requests())
def test_hostile_paths_queries_keys_and_reloads_never_get_a_5xx_or_another_tenants_run(
    server: ThreadedServer, keys: Keys, request: tuple[str, str, bytes | None, Any]
) -> None:
    method, path, body, who = request
    headers = _credentials(keys, who)
    if body is not None:
        headers["content-type"] = "application/json"
    answer = httpx.request(method, f"{server.url}{path}", content=body, headers=headers, timeout=60)
    assert answer.status_code < 500, (method, path[:200], who and str(who)[:40], answer.text[:300])
    if answer.status_code >= 400:
        assert answer.json()["error"]["message"], answer.text[:300]
    if who != "ops" and path.startswith(("/v1/runs/", "/runs/")) and "tenant=" in path:
        assert answer.status_code != 200, (path[:200], who)  # only admins name another tenant
    if path.startswith("/admin/"):
        assert answer.status_code != 200  # no hostile model is a model: nothing was reloaded
