"""Helpers shared by the tests (imported as `support`; pytest puts tests/ on the path)."""

from __future__ import annotations

from typing import Any

from rlme.service.settings import Settings

# Tight limits so the limit checks are reachable with small requests.
TEST_LIMITS = {"max_items": 64, "max_questions": 8, "max_text_chars": 6000, "max_body_bytes": 200_000}
TEST_MAX_MODEL_LEN = 1024


def service_settings(**overrides: Any) -> Settings:
    """float32 (equality tests need it), small limits, the user's model cache."""
    evaluator = {"name": "default", "dtype": "float32", "max_model_len": TEST_MAX_MODEL_LEN}
    values: dict[str, Any] = {"evaluators": [evaluator], "limits": TEST_LIMITS}
    values.update(overrides)
    return Settings.load(**values)
