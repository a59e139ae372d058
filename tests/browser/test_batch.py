"""The batch page in a real browser (Debian's Chromium) against a real gunicorn.

What the test client cannot show: static/batch.js uploading the file, following
the server's progress events on screen, inserting the outcome into the page
without leaving it, and the browser's download of the submission.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import ROW_WAIT, VIEWPORT, Site
from tests.conftest import TEST_CSV
from tests.integration.helpers import csv_with_cell, kaggle_rows
from titanic_web.predictor import Predictor

pytestmark = pytest.mark.browser

UPLOAD = "Upload and predict"  # the button's text
BIG_ROWS = 20_123  # 41 progress events at the batch site's BATCH_CHUNK_ROWS=500, the last one short

#: Installed before the upload: every text the progress panel shows and every value of its bar.
WATCH_PROGRESS = """() => {
  window.__statuses = [];
  window.__bar = [];
  const panel = document.getElementById("batch-progress");
  const status = panel.querySelector(".status");
  const bar = panel.querySelector("progress");
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) window.__statuses.push(n.textContent);
  }).observe(status, {childList: true});
  new MutationObserver(() => {
    window.__bar.push(bar.hasAttribute("value") ? Number(bar.getAttribute("value")) : null);
  }).observe(bar, {attributes: true, attributeFilter: ["value"]});
  window.__same_document = true;  // gone if the upload navigated away instead of using XHR
}"""


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_dir(model_dir)


def expected_submission(predictor: Predictor, path: Path) -> list[str]:
    """The Kaggle submission of a competition-layout file, as lines, from the model itself."""
    rows = kaggle_rows(path)
    answers = predictor.predict(rows)
    return ["PassengerId,Survived", *(f"{r['PassengerId']},{a.survived}" for r, a in zip(rows, answers, strict=True))]


def write_big_csv(path: Path, rows: int) -> Path:
    """test.csv's passengers over and over, `rows` of them, PassengerId 1, 2, ..."""
    with TEST_CSV.open(newline="") as fh:
        header, *passengers = list(csv.reader(fh))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for i in range(rows):
        cells = list(passengers[i % len(passengers)])
        cells[0] = str(i + 1)
        writer.writerow(cells)
    path.write_text(out.getvalue())
    return path


def batch_rows(site: Site) -> tuple[int, int]:
    """(predictions with source 'batch', their feature_store rows)."""
    with closing(sqlite3.connect(f"file:{site.db_path}?mode=ro", uri=True, timeout=10)) as conn:
        conn.execute("BEGIN")
        predictions = conn.execute("SELECT count(*) FROM predictions WHERE source = 'batch'").fetchone()[0]
        features = conn.execute(
            "SELECT count(*) FROM feature_store JOIN predictions ON predictions.id = feature_store.prediction_id "
            "WHERE predictions.source = 'batch'"
        ).fetchone()[0]
        conn.rollback()
    return int(predictions), int(features)


def wait_for_batch_rows(site: Site, expected: tuple[int, int]) -> tuple[int, int]:
    deadline = time.monotonic() + ROW_WAIT
    counts = batch_rows(site)
    while counts != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = batch_rows(site)
    return counts


def upload(page: Page, site: Site, path: Path) -> None:
    """Open the batch page, choose the file, watch the progress panel, click upload."""
    page.goto(f"{site.server.base_url}/batch")
    expect(page.locator("#batch-progress")).to_be_hidden()
    page.locator("input[name='file']").set_input_files(path)
    page.evaluate(WATCH_PROGRESS)
    page.get_by_role("button", name=UPLOAD).click()


def number(text: str) -> int:
    return int(text.replace(",", ""))


# -- a file of 20,123 passengers -----------------------------------------------------------------


def test_big_file_shows_progress_summary_and_downloads_its_submission(
    batch_site: Site, page: Page, predictor: Predictor, tmp_path: Path
) -> None:
    path = write_big_csv(tmp_path / "passengers.csv", BIG_ROWS)
    expected = expected_submission(predictor, path)
    survived = sum(int(line.rsplit(",", 1)[1]) for line in expected[1:])
    batch_site.settle()
    before = batch_rows(batch_site)

    upload(page, batch_site, path)

    expect(page.locator("#batch-progress")).to_be_visible()
    page.locator("#batch-summary").wait_for()
    assert page.evaluate("window.__same_document") is True, "the upload left the page: batch.js did not run"
    expect(page.locator("#batch-progress .status")).to_have_text("Done.")
    expect(page.get_by_role("button", name=UPLOAD)).to_be_enabled()

    # The panel followed the server: "Checked and predicted N passengers…" with N growing to the end.
    statuses: list[str] = page.evaluate("window.__statuses")
    progress = [re.fullmatch(r"Checked and predicted ([\d,]+) passengers…", s) for s in statuses]
    counted = [number(m.group(1)) for m in progress if m]
    assert len(counted) >= BIG_ROWS // 500, statuses
    assert counted == sorted(set(counted)) and counted[-1] <= BIG_ROWS, counted
    assert statuses[0].startswith("Uploading") and statuses[-1] == "Done.", statuses
    bar: list[float | None] = page.evaluate("window.__bar")
    assert None not in bar and bar == sorted(bar) and bar[-1] == 1, bar

    # The figures.
    summary = page.locator("#batch-summary")
    expect(summary.locator(".verdict")).to_have_text(f"{BIG_ROWS:,} passengers predicted")
    assert number(page.locator("#batch-survived").inner_text()) == survived
    assert page.locator("#batch-rate").inner_text() == f"{survived / BIG_ROWS * 100:.1f}%"
    assert page.locator("#batch-errors").inner_text() == "0"

    # The browser's download is the expected submission, line by line.
    with page.expect_download() as caught:
        page.locator("#batch-download").click()
    download = caught.value
    assert download.suggested_filename == "submission.csv"
    saved = tmp_path / "submission.csv"
    download.save_as(saved)
    assert saved.read_text().splitlines() == expected

    # Every row is stored, with source "batch".
    after = (before[0] + BIG_ROWS, before[1] + BIG_ROWS)
    assert wait_for_batch_rows(batch_site, after) == after, batch_site.server.output()[-3000:]


# -- a bad row -----------------------------------------------------------------------------------


def test_bad_row_shows_the_error_table_with_its_line(batch_site: Site, page: Page, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(csv_with_cell(7, "Pclass", "4"))

    upload(page, batch_site, path)

    table = page.locator("#batch-error-list")
    table.wait_for()
    assert page.evaluate("window.__same_document") is True
    expect(page.locator("#batch-progress .status")).to_have_text("Finished: see below.")
    expect(page.locator("#batch-summary .verdict")).to_have_text("1 error in the file: nothing was predicted or stored")
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(1)
    line, column, problem = rows.first.locator("td").all_inner_texts()
    assert (line, column) == ("7", "Pclass")
    assert "1, 2, 3" in problem
    assert page.locator("#batch-download").count() == 0


def test_a_download_no_longer_kept_shows_why_instead_of_a_failed_download(batch_site: Site, page: Page) -> None:
    upload(page, batch_site, TEST_CSV)
    expect(page.locator("#batch-summary .verdict")).to_have_text("418 passengers predicted")
    href = page.locator("#batch-download").get_attribute("href") or ""
    token = href.split("/")[2]
    (batch_site.db_path.parent / "batches" / f"{token}.csv").unlink()  # as if BATCH_KEEP_HOURS had passed

    with page.expect_navigation():
        page.locator("#batch-download").click()

    expect(page.locator("main")).to_contain_text("No such batch result: results are kept for 24 hours.")


# -- without JavaScript --------------------------------------------------------------------------


def test_without_javascript_the_form_posts_and_answers(batch_site: Site, browser: Browser) -> None:
    context = browser.new_context(viewport=VIEWPORT, locale="en-GB", java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{batch_site.server.base_url}/batch")
        page.locator("input[name='file']").set_input_files(TEST_CSV)
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name=UPLOAD).click()
        response = navigation.value
        assert response is not None and response.status == 200, response and response.text()[:2000]
        expect(page.locator("#batch-summary .verdict")).to_have_text("418 passengers predicted")
        expect(page.locator("#batch-progress")).to_be_hidden()
        href = page.locator("#batch-download").get_attribute("href") or ""
        assert re.fullmatch(r"/batch/[0-9a-f]{32}/submission\.csv", href), href
    finally:
        context.close()


# -- a screenshot for the documentation ----------------------------------------------------------


def test_screenshot_of_a_finished_batch(batch_site: Site, page: Page, screenshots: Path) -> None:
    upload(page, batch_site, TEST_CSV)
    page.locator("#batch-summary").wait_for()
    expect(page.locator("#batch-progress .status")).to_have_text("Done.")
    expect(page.locator("#batch-summary .verdict")).to_have_text("418 passengers predicted")

    # The time taken changes on every run: masked (a --line grey bar), the picture is the same
    # each run, so running the tests does not leave a changed file in the checkout.
    time_figure = page.locator("#batch-summary dl.figures > div", has_text="Time").locator("dd")
    expect(time_figure).to_have_count(1)
    page.screenshot(path=screenshots / "batch.png", full_page=True, mask=[time_figure], mask_color="#d5dae3")

    data = (screenshots / "batch.png").read_bytes()
    assert data.startswith(b"\x89PNG")
    assert len(data) < 500_000, f"batch.png is {len(data)} bytes"
