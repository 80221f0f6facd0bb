"""A classroom under load: N real browser sessions on the Scores page of one server, warm model cache.

    PYTHONPATH=. .venv/bin/python scripts/load_test.py --sessions 1,5,10,20 [--shared] [--json out.json]

Starts `streamlit run app.py` on a free localhost port (its own model cache, trained once before timing), then
for each N opens N browser contexts (N Streamlit sessions) in one headless Chromium and times three interactions,
all N sessions at once: the page drawn (open /scores in a new browser context: the server also sends Streamlit's
JavaScript), the page reloaded (the browser has it cached), a slider moved (the threshold), a detector switched.
Reports p50 / p95 of each interaction's latency and the server's CPU seconds per interaction (user + system time
of the server process over the phase, divided by N), and "net" the same less what the idle server spends over the
phase's wall time (measured before the first level). Bounded: every wait has a timeout, everything is on
localhost, the server is stopped at the end. Needs Chromium at /usr/bin/chromium and playwright.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot'
# this session's script has finished: Streamlit marks its root element with the script's run state
IDLE = "document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state') === 'notRunning'"
TIMEOUT_MS = 300_000
DETECTORS = ("Output · Energy score", "Output · Maximum softmax probability (MSP)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def start_server(port: int, cache: str, shared: bool) -> subprocess.Popen:
    env = dict(os.environ, OOD_EXPLORER_CACHE=cache, PYTHONUNBUFFERED="1")
    if shared:
        env["OOD_EXPLORER_SHARED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise TimeoutError("streamlit did not become healthy within 120 s")


async def wait_idle(pid: int, quiet_s: float = 0.2, window_s: float = 2.0, windows: int = 4,
                    timeout_s: float = 240.0) -> float:
    """Wait until the server uses less than `quiet_s` CPU seconds in each of `windows` windows of `window_s` in a
    row: its background work (the UMAP warm-up starts 5 s after the first page) has started and finished.
    Returns the idle server's CPU seconds per second over those quiet windows (Streamlit polls its config files
    every 0.2 s, whatever the load): the baseline that `run_level` subtracts for its "net" figures."""
    deadline, quiet, used = time.time() + timeout_s, 0, 0.0
    while time.time() < deadline and quiet < windows:
        c0 = cpu_seconds(pid)
        await asyncio.sleep(window_s)
        delta = cpu_seconds(pid) - c0
        quiet, used = (quiet + 1, used + delta) if delta < quiet_s else (0, 0.0)
    return used / (max(quiet, 1) * window_s)


async def settle(page) -> None:
    """Wait until this session's script run has finished (give a rerun a moment to start first)."""
    await page.wait_for_timeout(150)
    await page.wait_for_function(IDLE, timeout=TIMEOUT_MS)


async def draw(page, url: str) -> float:
    t0 = time.perf_counter()
    await page.goto(f"{url}/scores", timeout=TIMEOUT_MS)
    await page.locator(".js-plotly-plot .legendtext", has_text="ID (test)").first.wait_for(timeout=TIMEOUT_MS)
    await page.locator('[data-testid="stSlider"]', has_text="Threshold").first.wait_for(timeout=TIMEOUT_MS)
    await settle(page)
    return time.perf_counter() - t0


async def move_slider(page) -> float:
    # react-aria's slider: the thumb holds a visually hidden range input that takes the keyboard
    thumb = page.locator('[data-testid="stSlider"]', has_text="Threshold").locator('input[type="range"]').first
    await thumb.focus()
    t0 = time.perf_counter()
    await thumb.press("ArrowRight")
    await settle(page)
    return time.perf_counter() - t0


async def switch_detector(page, label: str) -> float:
    box = page.locator('[data-testid="stSelectbox"]', has_text="Detector").first
    t0 = time.perf_counter()
    await box.locator("input").first.click()
    await page.keyboard.type(label.split(" · ", 1)[1])  # the selectbox filters its options as one types
    await page.get_by_role("option", name=label, exact=True).click(timeout=30_000)
    await settle(page)
    return time.perf_counter() - t0


async def run_level(browser, url: str, n: int, pid: int, idle_rate: float = 0.0) -> dict:
    contexts = [await browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(n)]
    pages = [await c.new_page() for c in contexts]
    out: dict = {"sessions": n}
    try:
        phases = [("page drawn", lambda p, i: draw(p, url)),
                  ("page reloaded", lambda p, i: draw(p, url)),  # the browser now has Streamlit's JavaScript
                  ("slider moved", lambda p, i: move_slider(p)),
                  ("detector switched", lambda p, i: switch_detector(p, DETECTORS[i % len(DETECTORS)]))]
        for name, action in phases:
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            times = await asyncio.gather(*(action(p, i) for i, p in enumerate(pages)), return_exceptions=True)
            cpu, wall = cpu_seconds(pid) - cpu0, time.perf_counter() - t0
            errors = [repr(t) for t in times if isinstance(t, BaseException)]
            ok = sorted(t for t in times if not isinstance(t, BaseException))
            p95 = ok[min(len(ok) - 1, int(round(0.95 * (len(ok) - 1))))] if ok else float("nan")
            out[name] = {"p50_s": statistics.median(ok) if ok else float("nan"), "p95_s": p95,
                         "server_cpu_s_per_interaction": cpu / n,
                         # the same less what the idle server spends over the phase's wall time
                         "net_server_cpu_s_per_interaction": max(0.0, cpu - idle_rate * wall) / n,
                         "phase_wall_s": wall, "errors": errors[:3], "n_errors": len(errors)}
    finally:
        for c in contexts:
            await c.close()
    return out


async def main_async(levels: list[int], shared: bool) -> list[dict]:
    from playwright.async_api import async_playwright

    cache = tempfile.mkdtemp(prefix="ood-load-cache-")
    port = free_port()
    proc = start_server(port, cache, shared)
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            warm = await browser.new_page()
            await draw(warm, url)  # trains the default model once: every level below runs on a warm cache
            await warm.close()
            idle_rate = await wait_idle(proc.pid)  # and the app's one-off background work (UMAP warm-up) is over
            print(json.dumps({"idle_server_cpu_s_per_s": idle_rate}), flush=True)
            for n in levels:
                res = await run_level(browser, url, n, proc.pid, idle_rate)
                results.append(res)
                print(json.dumps(res), flush=True)
            await browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(cache, ignore_errors=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="1,5,10,20", help="comma-separated session counts")
    ap.add_argument("--shared", action="store_true", help="run the server in shared (classroom) mode")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"no Chromium at {CHROMIUM}", file=sys.stderr)
        return 2
    levels = [int(x) for x in a.sessions.split(",") if x.strip()]
    if any(n < 1 or n > 50 for n in levels):
        print("session counts must be in 1..50", file=sys.stderr)
        return 2
    results = asyncio.run(main_async(levels, a.shared))
    print(f"\nScores page, warm cache, {os.cpu_count()} cores{' (shared mode)' if a.shared else ''}: "
          "p50 / p95 latency in s, server CPU s per interaction\n")
    kinds = ("page drawn", "page reloaded", "slider moved", "detector switched")
    print("| sessions | " + " | ".join(kinds) + " | errors |\n|---|---|---|---|---|---|")
    for r in results:
        cells = [f"{r[k]['p50_s']:.2f} / {r[k]['p95_s']:.2f}, cpu {r[k]['server_cpu_s_per_interaction']:.3f} "
                 f"(net {r[k]['net_server_cpu_s_per_interaction']:.3f})" for k in kinds]
        errs = sum(r[k]["n_errors"] for k in kinds)
        print(f"| {r['sessions']} | " + " | ".join(cells) + f" | {errs} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
