"""Time a user's first Scores page on their own images, in a real browser (issue 11: "upload of a 20 MB zip of
5,000 PNGs to the first Scores page <= 60 s"). Measured here, never asserted in tests.

A fresh `streamlit run app.py` (empty model cache) is opened in headless Chromium, as a user would:
Experiment page -> "Use your own images as the ID dataset" -> the zip into the uploader -> "Use ..." ->
"Train / load model" -> the Scores page, until its charts are drawn. The zip is written beforehand (never timed):
5,000 random RGB PNGs in 10 class folders, their side chosen so the zip is about 20 MB (scripts/bench_datasets.py's
writer). Printed: seconds from choosing the file to each step, and the total.

    PYTHONPATH=. .venv/bin/python scripts/bench_upload.py            # 5,000 PNGs, about 20 MB
    PYTHONPATH=. .venv/bin/python scripts/bench_upload.py --quick    # 300 PNGs, about 1 MB: checks the script only
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ood_core.local_server import free_port, wait_healthy  # noqa: E402
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot'
TIMEOUT_MS = 900_000  # a step that takes 15 minutes has failed


def _writer():
    """scripts/bench_datasets.py's zip writer (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_datasets", ROOT / "scripts" / "bench_datasets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_png_zip


def measure(archive: Path, workdir: Path) -> dict:
    """Start the app on an empty cache, drive the upload in Chromium and return the seconds of each step."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(os.environ, OOD_EXPLORER_CACHE=str(workdir / "cache"))
    log = open(workdir / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "localhost"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    steps: dict[str, float] = {}
    try:
        wait_healthy(url, proc, timeout=120)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 2000})
                page.goto(f"{url}/")
                page.get_by_text("Use your own images as the ID dataset").click()
                uploader = page.get_by_label("Images (.zip / .npz)", exact=True).get_by_test_id(
                    "stFileUploaderDropzoneInput")
                t0 = time.perf_counter()
                uploader.set_input_files(str(archive))
                page.get_by_text(f"Read {archive.name}").wait_for(timeout=TIMEOUT_MS)
                steps["read and checked"] = time.perf_counter() - t0
                page.get_by_role("button", name=f"Use upload-{archive.stem}-").click()
                page.locator('[data-testid="stForm"]', has_text=f"upload-{archive.stem}-").wait_for(
                    timeout=TIMEOUT_MS)
                steps["chosen as the ID dataset"] = time.perf_counter() - t0
                page.get_by_role("button", name="Train / load model").click()
                page.get_by_text("Trained a new model").wait_for(timeout=TIMEOUT_MS)
                steps["model trained"] = time.perf_counter() - t0
                page.get_by_role("link", name="Scores").first.click()
                page.wait_for_function(f"document.querySelectorAll('{CHART}').length >= 3", timeout=TIMEOUT_MS)
                steps["Scores page drawn"] = time.perf_counter() - t0
                if page.locator('[data-testid="stException"]').count():
                    raise RuntimeError("the app showed a traceback; see " + str(workdir / "streamlit.log"))
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 PNGs of about 1 MB in all (checks the script)")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"no Chromium at {CHROMIUM}: this benchmark drives a real browser", file=sys.stderr)
        return 2
    n, mb = (300, 1.2) if args.quick else (5_000, 20.0)
    with tempfile.TemporaryDirectory(prefix="ood-bench-upload-") as tmp:
        work = Path(tmp)
        archive = work / "pngs.zip"
        info = _writer()(archive, n, mb)
        steps = measure(archive, work)
    load = os.getloadavg()
    print(f"{info['images']:,} PNGs of {info['side']}x{info['side']} RGB, a {info['bytes'] / 1e6:.1f} MB zip "
          f"(load average {load[0]:.1f} at the end, 2 cores)")
    for name, s in steps.items():
        print(f"  {name:<26} {s:7.1f} s after choosing the file")
    total = steps["Scores page drawn"]
    print(f"first Scores page: {total:.1f} s (target <= 60 s: {'met' if total <= 60 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"zip": info, "steps_seconds": steps, "load_average": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
