"""The cost panel: one self-contained page from the committed bench/results files, opened in headless Chromium
(Debian's chromium driven by Playwright): it loads with no console errors, shows every configuration, its charts
and its sorting and filtering work; and `sage infer panel --serve` serves it on localhost."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from accel.integration.metrics import row_labels
from accel.tools.panel import PanelError, build_panel, load_results_file, make_server, write_panel

ROOT = Path(__file__).resolve().parents[2]
# Every card's results: the top level (the H200), a folder per other card (bench/results/<card>/); raw/ holds sweeps.
RESULTS = sorted(path for pattern in ("*.json", "nvidia-*/*.json")
                 for path in (ROOT / "bench" / "results").glob(pattern))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def tables():
    return [table for path in RESULTS for table in load_results_file(path)]


@pytest.fixture(scope="module")
def page_html() -> str:
    return build_panel(RESULTS, price_per_gpu_hour=3.5)


def test_the_page_is_self_contained_and_names_every_configuration(page_html):
    assert RESULTS, "bench/results has no results files"
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page_html), "the page loads from the network"
    links = re.findall(r"<link[^>]*>", page_html)
    assert links == ['<link rel="icon" href="data:,">'], links  # the empty inline icon, nothing fetched
    assert "<script src" not in page_html and "@import" not in page_html and "url(" not in page_html
    for table in tables():
        for label in row_labels(table.rows):
            assert html.escape(label, quote=True) in page_html, (table.path.name, label)
    assert page_html.count("<svg") >= len(RESULTS)
    assert "cost at $3.5 per GPU-hour" in page_html and "cost / 1M tokens" in page_html


def test_without_a_price_the_page_says_how_to_get_cost(monkeypatch):
    monkeypatch.delenv("ACCEL_PRICE_PER_GPU_HOUR", raising=False)
    page = build_panel([ROOT / "bench" / "results" / "decode.json"])
    assert "pass --price-per-gpu-hour" in page and "cost / 1M tokens" not in page


def test_bad_inputs_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(PanelError, match="results file .*nope.json does not exist"):
        build_panel([tmp_path / "nope.json"])
    (tmp_path / "empty.json").write_text(json.dumps({"title": "x", "rows": []}))
    with pytest.raises(PanelError, match="has no 'rows' of configurations; pass files written by bench"):
        build_panel([tmp_path / "empty.json"])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PanelError, match="broken.json is not readable JSON"):
        build_panel([tmp_path / "broken.json"])
    with pytest.raises(PanelError, match="give at least one results file"):
        build_panel([])
    with pytest.raises(PanelError, match="is a directory; give a file name"):
        write_panel("<html></html>", tmp_path)


def test_written_page_is_readable_by_others(tmp_path, page_html):
    out = write_panel(page_html, tmp_path / "panel.html")
    assert out.read_text() == page_html and out.stat().st_mode & 0o777 == 0o644


def browser_available() -> bool:
    missing = [name for name, ok in (("playwright", _has_playwright()), (str(CHROMIUM), CHROMIUM.exists())) if not ok]
    if missing and os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} missing: scripts/bootstrap installs them (apt chromium, pip playwright)")
    return not missing


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_headless_chromium_shows_every_configuration_without_errors(tmp_path, page_html):
    if not browser_available():
        pytest.skip("needs playwright and Debian's chromium (scripts/bootstrap installs both)")
    from playwright.sync_api import sync_playwright

    server = make_server(page_html, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    problems: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
                    if message.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
            response = page.goto(url)
            assert response is not None and response.status == 200
            page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            sections = page.locator("section.results")
            assert sections.count() == len(tables())
            for index, table in enumerate(tables()):
                section = sections.nth(index)
                shown = section.locator("table.compare tbody tr td:first-child").all_inner_texts()
                labels = row_labels(table.rows)
                assert [text.replace(" baseline", "").strip() for text in shown] == labels, table.path.name
                assert section.locator("svg.chart").count() >= 1, table.path.name
            decode = page.locator("section[data-file='decode.json']").first
            assert decode.locator("svg.chart text.chart-title", has_text="cost / 1M tokens").count() == 1
            header = decode.locator("table.compare th", has_text="throughput")
            header.click()  # sort by throughput, ascending: hf-eager (slowest) first
            assert decode.locator("table.compare tbody tr td:first-child").first.inner_text() == "hf-eager"
            page.fill("#filter", "w4a16")
            visible = decode.locator("table.compare tbody tr:not(.hidden) td:first-child").all_inner_texts()
            assert visible and all("w4a16" in text for text in visible)
            shot = tmp_path / "panel.png"
            page.fill("#filter", "")
            page.screenshot(path=str(shot), full_page=False)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert problems == []


@pytest.mark.slow
def test_sage_infer_panel_serves_the_page_on_localhost(tmp_path):
    out = tmp_path / "panel.html"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")}
    code = "import sys; from accel.tools.cli import main; sys.argv[0] = 'sage'; main()"
    results = [str(ROOT / "bench" / "results" / name) for name in ("decode.json", "speculative_cpu.json")]
    process = subprocess.Popen([sys.executable, "-c", code, "infer", "panel", *results, "--out", str(out), "--serve",
                                "--port", "0", "--price-per-gpu-hour", "2"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**environ, "COLUMNS": "200"})
    try:
        url = None
        while url is None:
            line = process.stderr.readline()
            assert line, f"sage exited before serving: {process.stderr.read()}"
            match = re.search(r"serving the panel at (http://127\.0\.0\.1:\d+/)", line)
            url = match.group(1) if match else None
        with urllib.request.urlopen(url, timeout=10) as response:
            served = response.read().decode("utf-8")
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        assert served == out.read_text()  # what it wrote is what it serves
        assert "speculative_cpu" in served and "cost at $2 per GPU-hour" in served
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "other", timeout=10)
        assert missing.value.code == 404
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_cli_writes_the_page(tmp_path):
    from typer.testing import CliRunner

    from accel.tools.cli import app

    out = tmp_path / "p.html"
    result = CliRunner().invoke(app, ["infer", "panel", str(ROOT / "bench" / "results" / "quant_accuracy.json"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rtn-w4-sym" in out.read_text()
    missing = CliRunner().invoke(app, ["infer", "panel", str(tmp_path / "none.json")])
    assert missing.exit_code != 0 and "does not exist" in str(missing.exception or missing.output)
