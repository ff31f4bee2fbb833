"""The run's page, GET /runs/{run}: rendered from a report (escaping the policy's text),
then served by the real `rlme serve` from a monitor's SQLite file and opened in a real
headless Chromium (Debian's `chromium`), whose screenshot must show the plots."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from rlme.client.wire import Item, ItemResult, QuestionScore, RewardRequest
from rlme.service.metrics import Metrics
from rlme.service.monitoring.monitor import RunMonitor
from rlme.service.monitoring.page import BLUE, LEVEL_COLOURS, RED, render
from rlme.service.monitoring.probes import CanaryScore
from rlme.service.settings import MonitoringConfig

from support import start_server

INJECTED = "<script>document.title='owned'</script><b>bold</b>"


def record_run(db: Path, run: str = "page-test", steps: int = 8) -> RunMonitor:
    """A run whose reward rises while its rule's pass rate falls, with canaries: every plot has data."""
    monitor = RunMonitor(MonitoringConfig(window=2), db, Metrics())
    for step in range(1, steps + 1):
        items, results = [], []
        for i in range(12):
            p_yes = 0.3 + 0.05 * step + 0.01 * i
            passes = i < 12 - step  # fewer pass as the run goes on
            response = INJECTED if i == 11 else "**Lima**" * (1 + step % 3) + f" answer {i}"  # 11: top reward
            item = Item(prompt="What is the capital of Peru?", response=response, rule_score=float(passes))
            items.append(item)
            score = QuestionScore(evaluator="default", question="correct", p_yes=p_yes, logp_yes=-1.0,
                                  logp_no=-1.2, weight=1.0, label_mass=0.6)  # fmt: skip
            results.append(ItemResult(id=None, reward=-1 + p_yes, scores=[score]))
        monitor.observe(RewardRequest(items=items, rubric="correctness", run=run, step=step), results)
        canary = CanaryScore(
            "empty", "What is the capital of Peru?", "", 0.2 + 0.06 * step, 0.4 + 0.05 * step
        )
        monitor.observe_probes(run, step, [], [canary])
    return monitor


def test_the_page_renders_every_plot_and_escapes_the_policys_text(tmp_path: Path) -> None:
    monitor = record_run(tmp_path / "runs.sqlite")
    report = monitor.report("page-test")
    assert report is not None
    assert [s.alarm for s in report.steps][-1] == report.alarm  # the alarm's history, step by step
    assert report.steps[0].alarm == "ok"  # too early for any signal
    assert report.first_alarm_step == next(s.step for s in report.steps if s.alarm == "alarm")
    assert f"first raised at step {report.first_alarm_step}" in render(report)
    # The run is the tenant's own: another tenant has no run of that id (issue 21).
    assert report.samples and monitor.report("page-test", "anonymous") == report
    assert monitor.report("page-test", "team-b") is None
    page = render(report)
    assert page.count("<svg") == 8 and page.count("<polyline") >= 8
    assert "<script>" not in page and "&lt;script&gt;" in page  # the policy's text is data
    assert f"background:{LEVEL_COLOURS[report.alarm]}" in page
    assert "rule_trend" in page and "canaries" in page


@pytest.mark.model
def test_the_page_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium; .ci/run installs it as root)")
    from PIL import Image

    db = tmp_path / "runs.sqlite"
    record_run(db).close()
    shot = tmp_path / "page.png"
    with start_server(tmp_path, env={"RLME_MONITORING__DB_PATH": str(db)}) as url:
        page = httpx.get(f"{url}/runs/page-test")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no scripts
        assert httpx.get(f"{url}/runs/nobody").status_code == 404
        browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--window-size=1000,1700", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
        subprocess.run([*browser, f"--screenshot={shot}", f"{url}/runs/page-test"], check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        dom = subprocess.run([*browser, "--dump-dom", f"{url}/runs/page-test"], check=True,
                             capture_output=True, timeout=120, text=True).stdout  # fmt: skip
    assert "<title>rlme run page-test</title>" in dom  # the injected script did not run
    assert dom.count("<polyline") >= 8
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 1700)

    def pixels(hex_colour: str) -> int:
        target = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        return sum(count for count, rgb in image.getcolors(1 << 20) or []
                   if all(abs(a - b) <= 12 for a, b in zip(rgb, target, strict=True)))  # fmt: skip

    # The plots are drawn: the first series' blue lines and the canaries' red line are on
    # screen (a page whose SVG failed to render shows neither), and the alarm badge.
    assert pixels(BLUE) > 1500, pixels(BLUE)
    assert pixels(RED) > 150, pixels(RED)
    assert pixels(LEVEL_COLOURS["alarm"]) > 200
