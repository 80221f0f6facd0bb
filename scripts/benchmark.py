"""Benchmark of the default experiment (digits, small CNN), on this machine's CPU.

Measures and prints:
  1. training time of the default model (median of --repeats fresh trainings);
  2. scoring every registered detector on every OOD set from the cached Outputs, split into
     detectors that need no network and those that run it again, vs. with a fresh forward pass per detector;
  3. time from `make run` (venv present) to the Scores page drawn in headless Chromium, cold and warm cache;
  4. peak resident memory (VmHWM) of the dashboard process after visiting the pages.

    PYTHONPATH=. .venv/bin/python scripts/benchmark.py [--repeats 3] [--skip-browser] [--json bench.json]
"""
from __future__ import annotations

import argparse
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
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from ood_core import Spec, pipeline  # noqa: E402
from ood_core.detectors import REGISTRY  # noqa: E402
from ood_core.settings import detectors_for  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_library(repeats: int) -> dict:
    res: dict = {}
    with tempfile.TemporaryDirectory() as cache:
        train_times = []
        for _ in range(repeats):
            exp = pipeline.prepare(Spec(), cache_dir=cache, device="cpu", retrain=True)
            train_times.append(exp.training.seconds)
        res["train_seconds_median"] = statistics.median(train_times)
        res["train_seconds_all"] = train_times
        res["id_accuracy"] = exp.id_accuracy
        names = detectors_for(exp.spec.setting, exp.spec.model, exp.bench.num_classes)
        offline = [n for n in names if not REGISTRY[n].runs_network]
        online = [n for n in names if REGISTRY[n].runs_network]
        # warm-up (ensemble members are trained once and cached here, like in the app)
        pipeline.evaluate(exp, names)
        res["n_detectors"] = len(names)
        res["n_ood_sets"] = len(exp.ood_names)
        res["score_cached_no_network_median"], _ = median_time(lambda: pipeline.evaluate(exp, offline), repeats)
        if online:
            res["score_cached_network_median"], _ = median_time(lambda: pipeline.evaluate(exp, online), repeats)
        res["score_cached_all_median"], _ = median_time(lambda: pipeline.evaluate(exp, names), repeats)

        def fresh_forward_each():
            # what a library without cached outputs does: one forward pass of every split per detector
            for name in names:
                exp.outputs = pipeline.compute_outputs(exp.model, exp.bench, exp.device)
                pipeline.evaluate(exp, [name])

        res["score_fresh_forward_per_detector_median"], _ = median_time(fresh_forward_each, repeats)
        res["speedup_cached_vs_fresh"] = res["score_fresh_forward_per_detector_median"] / res["score_cached_all_median"]
        rows, _ = pipeline.evaluate(exp, names)
        res["detector_errors"] = sorted({r["detector"] for r in rows if r["error"]})
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_pids(port: int) -> list[int]:
    """PIDs of the streamlit processes serving `port` (children of make)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "streamlit" in cmd and f"--server.port {port}" in cmd and "make" not in cmd.split()[0]:
            pids.append(int(p.name))
    return pids


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


@contextmanager
def app_on_scores(cache: str):
    """`make run` on a free port with `cache` as model cache, a Chromium page on /scores with its histogram drawn.

    Yields (page, port, seconds from launching `make run` to the histogram); stops the server afterwards.
    """
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(os.environ, OOD_EXPLORER_CACHE=cache)
    t0 = time.perf_counter()
    proc = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = time.time() + 120
            while True:
                try:
                    page.goto(f"http://localhost:{port}/scores", timeout=5000)
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
            # the histogram's legend names the ID set (the live training curve is a plotly chart too)
            page.locator(".js-plotly-plot .legendtext", has_text="ID (test)").first.wait_for(timeout=180_000)
            yield page, port, time.perf_counter() - t0
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def time_make_run_to_scores(cache: str, visit_all: bool = False) -> tuple[float, float]:
    """Seconds from launching `make run` to the Scores histogram drawn; and the app's peak RSS (MiB)."""
    with app_on_scores(cache) as (page, port, elapsed):
        if visit_all:
            page.goto(f"http://localhost:{port}/", timeout=30_000)
            page.wait_for_selector(".js-plotly-plot", timeout=120_000)
        rss = max((vm_hwm_mib(pid) for pid in app_pids(port)), default=float("nan"))
    return elapsed, rss


SWITCH_TARGETS = {  # sidebar link text -> what is on that page once drawn
    "Compare": ".js-plotly-plot", "Sensitivity": ".js-plotly-plot", "Methods": ".katex",
    "Embeddings": ".js-plotly-plot", "Activations": ".js-plotly-plot", "Explanations": '[data-testid="stImage"] img',
    "Scores": ".js-plotly-plot", "Experiment": ".js-plotly-plot",
}


def bench_page_switch(rounds: int = 2) -> dict:
    """Seconds from clicking a page in the sidebar to its content drawn, warm caches (second round onwards)."""
    cache = tempfile.mkdtemp(prefix="ood-bench-switch-")
    times: dict[str, list[float]] = {k: [] for k in SWITCH_TARGETS}
    try:
        with app_on_scores(cache) as (page, _, _):
            for r in range(rounds + 1):  # round 0 warms every page's caches
                for link, selector in SWITCH_TARGETS.items():
                    t0 = time.perf_counter()
                    page.locator('[data-testid="stSidebarNav"] a', has_text=link).first.click()
                    page.wait_for_url(f"**/{'' if link == 'Experiment' else link.lower()}", timeout=60_000)
                    # every page's title starts with its name: the new page's script is running or done
                    page.locator("h1", has_text=f"{link}:").first.wait_for(timeout=120_000)
                    page.locator(selector).first.wait_for(timeout=120_000)
                    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                           timeout=120_000)
                    if r:
                        times[link].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_app(repeats: int) -> dict:
    if not Path(CHROMIUM).exists():
        return {"skipped": f"{CHROMIUM} not found"}
    res: dict = {}
    cold, warm, rss = [], [], []
    for _ in range(repeats):
        cache = tempfile.mkdtemp(prefix="ood-bench-cache-")
        try:
            t, r = time_make_run_to_scores(cache)
            cold.append(t)
            t, r2 = time_make_run_to_scores(cache, visit_all=True)
            warm.append(t)
            rss += [r, r2]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    res["make_run_to_scores_cold_median"] = statistics.median(cold)
    res["make_run_to_scores_warm_median"] = statistics.median(warm)
    res["cold_all"], res["warm_all"] = cold, warm
    res["app_peak_rss_mib_max"] = max(rss)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--skip-library", action="store_true", help="only the browser timings")
    ap.add_argument("--page-switch", action="store_true", help="also time page switches in the browser (warm)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    import torch

    print(f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
    res = {}
    if not args.skip_library:
        res["library"] = lib = bench_library(args.repeats)
        print_library(lib, args.repeats)
    if not args.skip_browser:
        res["app"] = bench_app(args.repeats)
        app = res["app"]
        if "skipped" in app:
            print(f"browser timings skipped: {app['skipped']}")
        else:
            print(f"`make run` -> Scores page drawn: cold cache median {app['make_run_to_scores_cold_median']:.1f} s, "
                  f"warm cache median {app['make_run_to_scores_warm_median']:.1f} s")
            print(f"peak resident memory of the app: {app['app_peak_rss_mib_max']:.0f} MiB")
    if args.page_switch and Path(CHROMIUM).exists():
        res["page_switch"] = sw = bench_page_switch()
        print("page switch in the browser, warm caches (median of 2 rounds): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in sw.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def print_library(lib: dict, repeats: int) -> None:
    print(f"training (default model, {repeats} runs): median {lib['train_seconds_median']:.2f} s  "
          f"(ID test accuracy {100 * lib['id_accuracy']:.2f}%)")
    print(f"{lib['n_detectors']} detectors x {lib['n_ood_sets']} OOD sets from cached outputs: "
          f"median {lib['score_cached_all_median']:.2f} s "
          f"(no network: {lib['score_cached_no_network_median']:.2f} s; "
          f"network again: {lib.get('score_cached_network_median', 0.0):.2f} s)")
    print(f"same with a fresh forward pass per detector: median {lib['score_fresh_forward_per_detector_median']:.2f} s "
          f"(cached is {lib['speedup_cached_vs_fresh']:.1f}x faster)")
    if lib["detector_errors"]:
        print(f"detectors with errors: {', '.join(lib['detector_errors'])}")


if __name__ == "__main__":
    sys.exit(main())
