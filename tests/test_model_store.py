"""Models by name: a Hugging Face hub id resolves through huggingface_hub's cache (offline
here: the cache is built by the test), and the embedded model's conversion is keyed by
content, so every venv on a machine shares it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlme.service.model_store import _content_key, resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, repo_id: str, model_path: Path) -> Path:
    """The layout huggingface_hub writes: refs/main -> commit, snapshots/<commit>/files."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model_path, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_a_hub_id_resolves_from_the_cache_offline(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = hub_cache(tmp_path / "hub", "TestOrg/tiny-evaluator", model_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("TestOrg/tiny-evaluator", tmp_path / "cache") == snapshot
    assert resolve_model(f"TestOrg/tiny-evaluator@{COMMIT}", tmp_path / "cache") == snapshot
    with pytest.raises(ValueError, match="not in the Hugging Face cache"):
        resolve_model("TestOrg/not-there", tmp_path / "cache")


def test_a_missing_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither 'embedded'"):
        resolve_model(str(tmp_path / "runs" / "checkpoints" / "step_000003"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model(str(tmp_path / "empty"), tmp_path)


def test_the_conversion_key_is_the_files_content_not_its_path(tmp_path: Path) -> None:
    first, second = tmp_path / "venv-a" / "m.gguf", tmp_path / "venv-b" / "m.gguf"
    memo = tmp_path / "cache" / ".sha256.json"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(b"GGUF" + bytes(range(256)) * 9000)
    assert _content_key(first, memo) == _content_key(second, memo)
    assert len(json.loads(memo.read_text())) == 2  # remembered per path
    # Same size, same ends, one byte changed in the middle: another model.
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 1
    second.write_bytes(bytes(data))
    assert _content_key(first, memo) != _content_key(second, memo)
