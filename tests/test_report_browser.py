"""The report page in a real headless browser: Chromium (Debian's package) driven by Playwright.

Every figure must load (a broken data URI gives naturalWidth 0), the tables must show the result
files' medians (computed here from plain netCDF reads), and an interrupted run must be flagged
where a reader sees it. Skips, with the reason, where no Chromium or no Playwright is installed
(docs/report.md says how to install them)."""

import os
import shutil

import pytest

from report_folder import PARTIAL, additive_medians, decompose_medians, make_folder

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    given = os.environ.get("NNSIGHT_PERSONA_CHROMIUM")
    if given:
        return given
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; or set NNSIGHT_PERSONA_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        # --no-sandbox: the sandbox cannot start as root (CI containers); the page is our own file
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    from nnsight_persona.report.page import write_report

    folder = make_folder(tmp_path_factory.mktemp("browser") / "toy")
    path = write_report(folder)
    page = browser.new_page()
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    page.folder = folder
    yield page
    page.close()


def test_every_figure_loads(page):
    images = page.evaluate("Array.from(document.images).map(i => ({w: i.naturalWidth, h: i.naturalHeight, "
                           "done: i.complete, name: i.dataset.figure}))")
    from nnsight_persona.plots import FIGURES

    # every PNG of the folder, and the partial copy's figures drawn for the page (it has no PNGs)
    assert len(images) == len(list(page.folder.glob("*.png"))) + len(FIGURES["substitute"])
    broken = [i for i in images if not (i["done"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"figures that did not load: {broken}"
    # Decoded to the end: a truncated PNG keeps its size (naturalWidth) but its last rows stay
    # transparent, while every figure is drawn on an opaque background.
    opaque = page.evaluate("""Array.from(document.images).map(img => {
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        const row = ctx.getImageData(0, c.height - 1, c.width, 1).data;
        let n = 0; for (let i = 3; i < row.length; i += 4) if (row[i] > 0) n++;
        return n / c.width; })""")
    assert all(fraction == 1 for fraction in opaque), f"figures not decoded to their last row: {opaque}"


def _table(page, section: str, kind: str) -> list[dict]:
    """Rows of a table as the browser has them: {column: (shown text, data-value)}, after opening the
    section's folded tables as a reader does (they are hidden until then)."""
    folded = page.locator(f'section[id="{section}"] details.tables')
    if folded.count() and not folded.first.get_attribute("open"):
        assert not page.locator(f'section[id="{section}"] table[data-table="{kind}"]').first.is_visible()
        folded.first.locator("summary").click()
    return page.evaluate(
        """([section, kind]) => Array.from(document.querySelectorAll(
               `section[id="${section}"] table[data-table="${kind}"] tbody tr`)).map(tr =>
               Object.fromEntries(Array.from(tr.cells).map(td => [td.dataset.column, [td.innerText, td.dataset.value]])))""",
        [section, kind])


@pytest.mark.parametrize("name", ["substitute-toy", f"{PARTIAL[:-3]}"])
def test_the_additivity_table_shows_the_files_medians(page, name):
    want = additive_medians(page.folder / f"{name}.nc")
    rows = _table(page, name, "additivity")
    assert len(rows) == len(want)
    for row in rows:
        key = (row["position"][0], int(row["layer"][0]))
        assert float(row["additive"][1]) == pytest.approx(want[key], rel=1e-9)
        assert float(row["additive"][0]) == pytest.approx(want[key], rel=2e-3)


def test_the_decompose_table_shows_the_files_medians(page):
    want = decompose_medians(page.folder / "decompose-toy.nc")
    rows = _table(page, "decompose-toy", "medians")
    assert len(rows) == len(want)
    for row in rows:
        assert float(row["cos_xy_sum"][0]) == pytest.approx(want[(row["position"][0], int(row["layer"][0]))],
                                                            rel=2e-3, abs=1e-4)


def test_an_incomplete_run_is_flagged_where_a_reader_sees_it(page):
    banner = page.locator("#incomplete-runs")
    assert banner.is_visible()
    assert PARTIAL in banner.inner_text()
    heading = page.locator(f'section[id="{PARTIAL[:-3]}"] h3')
    assert "incomplete run" in heading.inner_text()
    assert "incomplete" not in page.locator('section[id="substitute-toy"] h3').inner_text()
    completed = page.locator(f'section[id="{PARTIAL[:-3]}"] table[data-table="provenance"] td[data-completed]')
    assert completed.inner_text().startswith("NO")


def test_the_findings_table_opens_the_page_and_no_section_is_empty(page):
    findings = page.locator('section#findings table[data-table="findings"]')
    assert findings.is_visible() and findings.locator("tbody tr").count() > 0
    first = page.evaluate("document.querySelector('h1').nextElementSibling.nextElementSibling.id")
    assert first in ("findings", "incomplete-runs")
    empty = page.evaluate("""Array.from(document.querySelectorAll('div.experiment section')).filter(s =>
        !s.querySelector('img') && !s.querySelector('details.tables table')).map(s => s.id)""")
    assert not empty, f"sections without a figure or a table: {empty}"
    hidden = page.evaluate("""Array.from(document.querySelectorAll('div.experiment section')).filter(s =>
        s.querySelector('img') && s.querySelector('img').getBoundingClientRect().height === 0).map(s => s.id)""")
    assert not hidden, f"sections whose first figure is not shown: {hidden}"
