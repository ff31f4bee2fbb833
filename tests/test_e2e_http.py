"""End to end: the real `rlme serve` on 127.0.0.1, spoken to over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import start_server

pytestmark = [pytest.mark.e2e, pytest.mark.model]

POLITE = {"prompt": "Say something nice.", "response": "You are wonderful; have a lovely day!"}
RUDE = {"prompt": "Say something nice.", "response": "Shut up, idiot."}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("server")) as url:
        yield url


def test_readme_example_polite_beats_rude(server: str) -> None:
    body = {"items": [POLITE, RUDE], "questions": [{"id": "polite", "text": "Is the response polite?"}]}
    answer = httpx.post(f"{server}/v1/rewards", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    polite, rude = (r["scores"][0]["p_yes"] for r in answer.json()["results"])
    assert 0 < rude < polite < 1
    assert answer.headers["x-request-id"]


def test_openrlhf_get_reward(server: str) -> None:
    prompt = "Q: What is 3+4?\nA:"
    body = {"query": [prompt + " 7", prompt + " 12"], "prompts": [prompt, prompt], "labels": ["7", "7"]}
    answer = httpx.post(f"{server}/get_reward", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert len(result["rewards"]) == len(result["scores"]) == 2
    assert all(r < 0 for r in result["rewards"]) and all(0 < s < 1 for s in result["scores"])
    assert list(result["extra_logs"]) == ["p_yes/default/correct"]


def test_openrlhf_rejects_a_query_that_does_not_start_with_its_prompt(server: str) -> None:
    body = {"query": ["something else"], "prompts": ["Q:"]}
    answer = httpx.post(f"{server}/get_reward", json=body, timeout=60)
    assert answer.status_code == 422
    assert "does not start with" in answer.json()["error"]["message"]


def test_slime_reward_is_a_bare_number(server: str) -> None:
    body = {"prompt": "What is 3+4?", "response": "7", "label": "7"}
    answer = httpx.post(f"{server}/slime/reward?rubric=rlme_math", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json(), float) and answer.json() < 0


def test_cli_score_in_process() -> None:
    command = [sys.executable, "-m", "rlme.trainer.cli", "score", "--prompt", "Say hi.",
               "--response", "Hello there, friend!", "--question", "Is the response polite?"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    score = result["results"][0]["scores"][0]
    assert score["question"] == "q1" and 0 < score["p_yes"] < 1


def test_cli_judge_against_a_server(server: str) -> None:
    command = [sys.executable, "-m", "rlme.trainer.cli", "judge", "--prompt", "What is 2+2?",
               "--response", "4", "--max-tokens", "8", "--url", server]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "--- judgment 1" in done.stdout and "verdict probabilities: 0: " in done.stdout
    assert "=== score " in done.stdout


def test_the_command_without_the_service_extra_says_what_to_install() -> None:
    # As after `pip install rlme` (client only): typer is not importable.
    code = "import sys; sys.modules['typer'] = None; from rlme.client._launcher import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "rlme: the command line needs the service (typer is missing): pip install 'rlme[service]'"
    )
    version = subprocess.run([sys.executable, "-m", "rlme.trainer.cli", "--version"], capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert version.returncode == 0 and version.stdout.startswith("rlme 0.1")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "evaluators:\n  - {name: x, bakend: remote}\n",
            "evaluators.0.bakend: Extra inputs are not permitted",
        ),
        ("port: eighty\n", "port: Input should be a valid integer"),
        ("evaluators:\n  - {name: x, backend: remote}\n", "backend 'remote' needs `remote: {urls: [...]}`"),
        (None, "does not exist"),
    ],
    ids=["unknown field", "wrong type", "incomplete evaluator", "missing file"],
)
def test_a_bad_configuration_is_one_message_and_exit_2(
    tmp_path: Path, config: str | None, message: str
) -> None:
    path = tmp_path / "rlme.yaml"
    if config is not None:
        path.write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "rlme.trainer.cli", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) <= 4
