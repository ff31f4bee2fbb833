"""Settings: YAML file, environment overrides, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlme.service.settings import Settings

YAML = """
port: 9001
evaluators:
  - name: judge
    dtype: float32
    batching: {max_wait_ms: 2}
rubrics:
  mine:
    questions: [{id: short, text: "Is it short?", weight: 0.5}]
limits: {max_items: 10}
"""


def test_yaml_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "rlme.yaml"
    config.write_text(YAML)
    monkeypatch.setenv("RLME_LIMITS__MAX_ITEMS", "7")
    settings = Settings.load(config)
    assert settings.port == 9001
    assert settings.limits.max_items == 7  # the environment wins over the file
    assert settings.limits.max_questions == 32  # untouched defaults stay
    assert settings.default_evaluator_name == "judge"
    assert settings.evaluators[0].batching.max_wait_ms == 2
    rubrics = settings.all_rubrics()
    assert rubrics["mine"].questions[0].weight == 0.5
    assert "rlme_math" in rubrics  # built-ins stay offered


def test_config_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "rlme.yaml"
    config.write_text("port: 9002\n")
    monkeypatch.setenv("RLME_CONFIG", str(config))
    assert Settings.load().port == 9002


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Settings.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"evaluators": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"default_evaluator": "b"}, "not one of"),
        ({"evaluators": [{"backend": "nope"}]}, "backend"),
        ({"evaluators": [{"yes_words": []}]}, "yes_words"),
        ({"limits": {"max_itemz": 3}}, "max_itemz"),
    ],
)
def test_bad_settings_fail_with_a_message(values: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings.load(**values)


def test_every_monitoring_setting_is_documented() -> None:
    from rlme.service.settings import MonitoringConfig

    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = [name for name in MonitoringConfig.model_fields if f"  {name}:" not in page]
    assert not missing, f"docs/configuration.md lacks monitoring keys {missing}"
    assert "calibrations_path:" in page
