"""The page in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no browser
download): what is drawn on the demo recipe, an error at its line, a build reaching 100%.

Screenshots go to the test's temp dir; with ``MERGEBUILD_UI_SHOTS=DIR`` they are also copied
there (``docs/img`` holds the ones docs/ui.md shows).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium installed (apt-get install chromium; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
expect = sync_api.expect  # waits through Playwright's own script (the page's CSP forbids eval)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:  # Playwright gives each launch a fresh, empty profile
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 760})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP refusals included
    pg.goto(server.url)
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    ctx.close()
    assert errors == [], errors  # no script error or refused resource on the page


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("MERGEBUILD_UI_SHOTS"):  # for docs/img: a 256-colour copy is a third of the size
        dest = Path(os.environ["MERGEBUILD_UI_SHOTS"]) / path.name
        try:
            from PIL import Image

            Image.open(path).convert("RGB").quantize(colors=256).save(dest, optimize=True)
        except ImportError:
            shutil.copy(path, dest)
    return path


def node_states(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        ".node.target", "ns => Object.fromEntries(ns.map(n => [n.dataset.id, n.dataset.state]))"
    )


def test_graph_and_a_bad_edit(page, tmp_path: Path):
    assert node_states(page) == {
        "target:out/math-code": "stale",
        "target:out/final": "stale",
        "target:out/frank": "stale",
    }
    assert page.locator(".node.model").count() == 4 and page.locator(".node.group").count() == 1
    assert "57/57 tensors (missing output)" in page.inner_text(".trow[data-target='out/frank']")
    assert page.inner_text("#summary") == "3 stale target(s), 135 stale tensor(s)"
    shot(page, tmp_path, "ui-graph")
    src = page.locator("#source")
    src.fill(src.input_value().replace("math  weight=0.6 density=0.5", "math  weight=0.6 density=", 1))
    page.wait_for_selector("#error:not(.hidden)")
    assert page.inner_text("#gutter span.err") == "22"
    assert "Mergefile:22:30: unexpected end of line" in page.inner_text("#error")
    assert "unsaved changes" in page.inner_text("#dirty")
    shot(page, tmp_path, "ui-error")
    src.fill(src.input_value().replace("density=\n", "density=0.5\n", 1))
    page.wait_for_selector("#error.hidden", state="attached")
    assert page.locator("#gutter span.err").count() == 0


def build_on_page(page, n: int) -> str:
    """Click Build in the target view and wait for page build ``n`` to end; its messages."""
    page.click(".tab[data-view='target']")
    page.click("#build")
    expect(page.locator("#progress")).to_contain_text(f"build {n}: done", timeout=60_000)
    return page.inner_text("#progress")


def edit_and_save(page, old: str, new: str) -> None:
    page.click(".tab[data-view='recipe']")
    src = page.locator("#source")
    src.fill(src.input_value().replace(old, new, 1))
    page.click("#save")
    expect(page.locator("#dirty")).to_have_text("saved")


def test_build_from_the_page_reaches_100_percent(page, server, tmp_path: Path):
    page.click(".node.target[data-id='target:out/math-code']")
    page.wait_for_selector("#heat table")
    assert page.input_value("#target-select") == "out/math-code"
    assert page.locator("#heat td.cell[data-value]").count() > 0
    page.click("#build")
    page.wait_for_selector(".prog[data-target='out/math-code'][data-pct='100']", timeout=60_000)
    assert "39/39 tensors (100%)" in page.inner_text(".prog[data-target='out/math-code']")
    page.wait_for_selector("#target-state.fresh", timeout=30_000)
    page.wait_for_selector("#times .t")
    shot(page, tmp_path, "ui-target")
    page.click(".tab[data-view='recipe']")
    page.wait_for_selector(".node.target[data-id='target:out/math-code'][data-state='fresh']")
    assert node_states(page)["target:out/final"] == "stale"
    # edit and see: a changed weight makes the target stale before anything is saved or built
    src = page.locator("#source")
    src.fill(src.input_value().replace("math  weight=0.6", "math  weight=0.5", 1))
    page.wait_for_selector(".node.target[data-id='target:out/math-code'][data-state='stale']")
    assert "(parameter changed)" in page.inner_text(".trow[data-target='out/math-code']")
    assert "weight=0.6" in server.session.path.read_text()
    edit_and_save(page, "math  weight=0.6", "math  weight=0.5")
    assert "39 computed" in build_on_page(page, 2)
    edit_and_save(page, "math  weight=0.5", "math  weight=0.6")  # back: every tensor is in the cache
    assert "0 computed, 39 from cache" in build_on_page(page, 3)
    page.click(".tab[data-view='cache']")
    expect(page.locator("#log tr.run")).to_have_count(3)
    page.click("#log tr.run")  # the newest run
    expect(page.locator("#log-records")).to_contain_text("39 tensor records")
    assert "hit" in page.inner_text("#log-records")
    assert "tensor" in page.inner_text("#kinds") and "would drop" in page.inner_text("#gc")
    assert page.locator("#chart svg rect").count() == 6  # hit rate and bytes saved, per build
    shot(page, tmp_path, "ui-cache")


def test_evolve_view(page, server, tmp_path: Path):
    from tests.ui.ui_support import write_search

    write_search(server.session.cache_dir / "evolve" / "out_best-0123456789ab", [0.31, 0.42, 0.38, 0.47, 0.45, 0.52])
    page.click(".tab[data-view='evolve']")
    page.wait_for_selector("#evolve-chart circle.eval")
    assert page.locator("#evolve-chart circle.eval").count() == 6
    assert page.locator("#evolve-chart polyline.best-line").count() == 1
    assert "6 evaluations, best score 0.52 (evaluation 6)" in page.inner_text("#evolve-note")
    assert page.locator("#genes td.cell[data-value]").count() == 4
    assert page.inner_text("#best-recipe").startswith("# evaluation 6: score 0.52")
    write_search(server.session.cache_dir / "evolve" / "out_best-0123456789ab", [0.6])  # live: a new evaluation
    expect(page.locator("#evolve-chart circle.eval")).to_have_count(7)
    shot(page, tmp_path, "ui-evolve")


def test_a_build_held_elsewhere_shows_up_live(page, server):
    from mergefile.store.lock import output_lock
    from mergefile.store.log import BuildLog

    demo = server.session.folder
    argv = ["-C", str(demo), "out/frank"]
    with output_lock(demo / "out" / "frank"), BuildLog(server.session.cache_dir / "logs").start_run(argv) as run:
        run.record(target="out/frank", tensor="model.norm.weight", key="k1", status="computed", seconds=0.01)
        page.wait_for_selector(".node.target[data-id='target:out/frank'][data-state='building']")
        expect(page.locator("#runs")).to_contain_text(
            f"running elsewhere: pid {os.getpid()} (mergebuild {' '.join(argv)}) — out/frank: 1 tensor done"
        )
        assert page.locator(".trow[data-target='out/frank'] button").is_disabled()
    page.wait_for_selector(".node.target[data-id='target:out/frank'][data-state='stale']")
    expect(page.locator("#runs")).to_have_text("")
