"""One real-browser test: `streamlit run app.py` on a cold cache, opened in headless Chromium.

The server trains the default model itself (fresh OOD_EXPLORER_CACHE), so this also checks that a
first visit to the Scores page shows real results with no clicks. Screenshots go to
artifacts/screenshots/ (git-ignored).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ood_core.local_server import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot'
COLD_START_S = 240  # cold training is ~10 s on an idle 2-core machine; leave room for a busy one

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: the real-browser test needs it", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")


SERVER_CACHE: dict = {}  # server url -> its model cache folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A streamlit server on a free port with an empty model cache (shared by this module's tests)."""
    tmp_path = tmp_path_factory.mktemp("browser")
    port = free_port()
    env = dict(os.environ, OOD_EXPLORER_CACHE=str(tmp_path / "cache"))
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "localhost"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    SERVER_CACHE[url] = tmp_path / "cache"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def _assert_no_exception(page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def test_scores_then_experiment_in_chromium(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            # tall viewport: Streamlit scrolls inside its main block, so full_page alone would cut the page
            page = browser.new_page(viewport={"width": 1500, "height": 2400})
            # first visit, cold cache: the Scores page trains the default model, then draws its charts
            page.goto(f"{server}/scores")
            page.wait_for_function(f"document.querySelectorAll('{CHART}').length >= 3", timeout=COLD_START_S * 1000)
            page.wait_for_timeout(1500)  # let plotly finish its layout before the screenshot
            _assert_no_exception(page)
            assert page.get_by_text("ID test accuracy").count() >= 1
            assert page.get_by_text("Current experiment").count() == 1  # app.py's shared sidebar, not v1 pages
            assert page.locator(".js-plotly-plot .legendtext", has_text="ID (test)").count() >= 1
            page.screenshot(path=str(SHOTS / "scores.png"), full_page=True)

            page.goto(f"{server}/")  # the Experiment page (default page); the model is cached now
            page.wait_for_selector(CHART, timeout=60_000)
            page.wait_for_selector('[data-testid="stImage"] img', timeout=60_000)
            page.wait_for_timeout(1500)
            _assert_no_exception(page)
            assert page.get_by_text("Train / load model").count() >= 1
            page.set_viewport_size({"width": 1500, "height": 1900})
            page.screenshot(path=str(SHOTS / "experiment.png"), full_page=True)
        finally:
            browser.close()
    assert (SHOTS / "scores.png").stat().st_size > 10_000


# url path -> what must be on the page once it is drawn (a chart, or for Methods a formula)
OTHER_PAGES = {
    "compare": CHART,
    "sensitivity": CHART,
    "methods": ".katex",
    "embeddings": CHART,
    "activations": CHART,
    "explanations": '[data-testid="stImage"] img',
}


def test_every_page_draws_in_chromium(server):
    """Visit each remaining page in turn (warm caches after the first), check it draws, screenshot it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2000})
            page.goto(f"{server}/scores")  # trains the default model on this fresh cache
            page.wait_for_selector(CHART, timeout=COLD_START_S * 1000)
            for path, selector in OTHER_PAGES.items():
                t0 = time.perf_counter()
                page.goto(f"{server}/{path}")
                page.wait_for_selector(selector, timeout=120_000)
                # the shared sidebar is drawn once the page's script has finished
                page.get_by_text("Current experiment").wait_for(timeout=120_000)
                page.wait_for_timeout(1000)
                _assert_no_exception(page)
                page.screenshot(path=str(SHOTS / f"{path}.png"), full_page=True)
                print(f"{path}: drawn in {time.perf_counter() - t0:.1f} s")
        finally:
            browser.close()
    for path in OTHER_PAGES:
        assert (SHOTS / f"{path}.png").stat().st_size > 10_000, path


def test_a_job_polls_lands_and_cancels_in_chromium(server):
    """Long work in a real browser: the job panel redraws itself while the work runs (st.fragment's run_every),
    the page reruns on its own when the job lands, and Cancel stops a training with no checkpoint left."""
    from ood_core import Spec, TrainConfig
    from ood_core.models import checkpoint_path

    cache = SERVER_CACHE[server]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2000})
            page.goto(f"{server}/scores")  # the default model (trained here on a cold cache)
            page.wait_for_selector(CHART, timeout=COLD_START_S * 1000)
            # a quick network method starts at once as a job; its result appears with no click
            page.goto(f"{server}/scores?detector=mc_dropout&sets=gaussian")
            page.wait_for_function(f"document.querySelectorAll('{CHART}').length >= 3", timeout=120_000)
            _assert_no_exception(page)
            # the ensemble trains a network: it says how long first and starts on a click
            page.goto(f"{server}/scores?detector=ensemble&sets=gaussian&p.members=2")
            start = page.get_by_role("button", name="Score with Deep ensemble")
            start.wait_for(timeout=120_000)
            assert page.get_by_text("trains 1 network").count() >= 1
            start.click()
            page.get_by_text("training ensemble member 2 of 2: epoch").wait_for(timeout=60_000)  # polled, not reloaded
            page.get_by_role("button", name="Cancel").click()
            page.get_by_text("nothing of it was kept").wait_for(timeout=60_000)
            _assert_no_exception(page)
            member = Spec(training=TrainConfig(member=1))  # the ensemble's second member, being trained
            assert not checkpoint_path(member, cache).exists()
            assert page.locator(CHART).count() == 0  # no partial result drawn
        finally:
            browser.close()


# presentation mode at 1024x768: url path -> the page's main element, which must lie inside the first screen
PRESENT_PAGES = {"scores": CHART, "": CHART, "compare": CHART, "sensitivity": CHART, "methods": ".katex",
                 "embeddings": CHART, "activations": CHART, "explanations": '[data-testid="stImage"] img'}
SMALL = {"width": 1024, "height": 768}


def _inside(box: dict, viewport: dict) -> bool:
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= viewport["width"]
            and box["y"] + box["height"] <= viewport["height"])


def test_presentation_mode_at_1024x768_has_each_pages_main_chart_on_the_first_screen(server):
    """Every page opened with present=1 on a 1024x768 screen: its main chart wholly inside the first screen
    (for Scores: the histogram), checked by bounding box; a screenshot of each, as a projector shows it."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=SMALL)
            for path, selector in PRESENT_PAGES.items():
                page.goto(f"{server}/{path}?present=1")
                page.wait_for_selector(selector, timeout=COLD_START_S * 1000)
                page.get_by_text("Current experiment").wait_for(state="attached", timeout=120_000)
                page.wait_for_timeout(1500)  # plotly's layout
                _assert_no_exception(page)
                assert "present=1" in page.url  # the address keeps the mode, so a link opens in it
                main = page.locator(selector).first
                if path == "scores":  # the histogram, not the ROC or PR curve
                    main = page.locator(CHART, has_text="Score distributions").first
                    assert page.get_by_text("A detector gives every image").count() == 0  # no explanations
                box = main.bounding_box()
                page.screenshot(path=str(SHOTS / f"present-{path or 'experiment'}.png"))
                assert _inside(box, SMALL), (path, box)
        finally:
            browser.close()


def test_a_preset_button_opens_its_view_and_the_sidebar_links_to_it(server):
    """A click on a teaching preset in the sidebar: its page, its choices and its lesson; the sidebar's link to the
    view is the browser's address (page path and query); the presentation toggle writes present=1 into it."""
    from urllib.parse import parse_qs, urlsplit

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server}/compare")
            page.wait_for_selector(CHART, timeout=COLD_START_S * 1000)
            page.get_by_text("Teaching presets").click()
            page.get_by_role("button", name="Near OOD is harder than far OOD").click()
            page.wait_for_url("**/scores?*preset=near-far*", timeout=120_000)
            page.get_by_text("on mirrored digits (near OOD)").wait_for(timeout=120_000)
            page.get_by_text("Current experiment").wait_for(state="attached", timeout=120_000)
            page.wait_for_timeout(1500)
            _assert_no_exception(page)
            query = parse_qs(urlsplit(page.url).query)
            assert query["detector"] == ["mahalanobis"] and query["sets"] == ["gaussian,flipped"]
            link = page.locator('[data-testid="stSidebar"] [data-testid="stCode"]').inner_text().strip()
            assert urlsplit(link)[:3] == urlsplit(page.url)[:3] and parse_qs(urlsplit(link).query) == query
            page.screenshot(path=str(SHOTS / "preset-near-far.png"))
            page.get_by_text("Presentation mode").click()
            page.wait_for_url("**present=1**", timeout=60_000)
            page.get_by_text("A detector gives every image").wait_for(state="detached", timeout=60_000)
        finally:
            browser.close()


def _class_folder_zip(path: Path, per_class: int = 40, side: int = 12) -> Path:
    """A .zip of three class folders of PNGs: a bright top half, a bright left half, a bright centre (noisy)."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    masks = {"top": np.s_[: side // 2, :], "left": np.s_[:, : side // 2], "centre": np.s_[3:-3, 3:-3]}
    with zipfile.ZipFile(path, "w") as z:
        for name, where in masks.items():
            for i in range(per_class):
                img = rng.integers(0, 60, (side, side)).astype(np.uint8)
                img[where] = 255 - img[where]
                buf = io.BytesIO()
                Image.fromarray(img, "L").save(buf, format="PNG")
                z.writestr(f"shapes/{name}/{i:03d}.png", buf.getvalue())
    return path


def test_an_uploaded_zip_becomes_the_id_dataset_and_reaches_scores_in_chromium(server, tmp_path):
    """The user's own images in a real browser: upload a .zip of class folders on the Experiment page, use it as
    the ID dataset, train, and see the Scores page draw on it."""
    archive = _class_folder_zip(tmp_path / "shapes.zip")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2000})
            page.goto(f"{server}/")
            page.get_by_text("Use your own images as the ID dataset").click()
            page.get_by_label("Images (.zip / .npz)", exact=True).get_by_test_id(
                "stFileUploaderDropzoneInput").set_input_files(str(archive))
            page.get_by_text("Read shapes.zip").wait_for(timeout=60_000)
            page.get_by_role("button", name="Use upload-shapes-").click()
            page.locator('[data-testid="stForm"]', has_text="upload-shapes-").wait_for(timeout=60_000)
            page.get_by_role("button", name="Train / load model").click()
            page.get_by_text("Trained a new model").wait_for(timeout=COLD_START_S * 1000)
            _assert_no_exception(page)
            assert page.get_by_text("3 classes").count() >= 1 or page.get_by_text("centre").count() >= 1
            assert "dataset=upload-shapes-" in page.url  # the link to this view names the dataset
            page.get_by_role("link", name="Scores").first.click()  # in the same session, as a user does
            page.wait_for_function(f"document.querySelectorAll('{CHART}').length >= 3", timeout=120_000)
            _assert_no_exception(page)
            page.get_by_text("Current experiment").wait_for(timeout=60_000)
            assert "dataset=upload-shapes-" in page.url and page.get_by_text("ID test accuracy").count() >= 1
            page.screenshot(path=str(SHOTS / "own-dataset-scores.png"), full_page=True)
        finally:
            browser.close()
