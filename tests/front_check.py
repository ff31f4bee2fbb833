"""Run by `make check-wheel` in a clean venv holding only `rlme[front]` (no torch): the
service in front of remote servers imports, builds its app from a remote config, and
waits for its (absent) servers instead of failing.

    python tests/front_check.py TOKENIZER_FOLDER
"""

from __future__ import annotations

import importlib.util
import sys

from fastapi.testclient import TestClient

from rlme.service.app import create_app
from rlme.service.settings import Settings


def main(tokenizer_folder: str) -> None:
    assert importlib.util.find_spec("torch") is None, "the front install must not bring torch"
    remote = {"urls": ["http://127.0.0.1:9"], "health_interval_s": 0.5}  # nothing listens there
    settings = Settings(evaluators=[{"backend": "remote", "model": tokenizer_folder, "remote": remote}])
    with TestClient(create_app(settings)) as client:
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "loading", ready.text
    assert "torch" not in sys.modules
    print("front check passed: remote service without torch")


if __name__ == "__main__":
    main(sys.argv[1])
