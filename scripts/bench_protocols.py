"""Wall time and headline numbers of the settings' full protocols, each run from the CLI as a user would.

    PYTHONPATH=. .venv/bin/python scripts/bench_protocols.py [--only osr,nd,ad,curve] [--warm-repeats 3] [--json out.json]

Each protocol runs once "cold" (a fresh, empty model cache: every model is trained) and then
`--warm-repeats` times with the models cached (median reported). Every run is a fresh
`python -m ood_core run ...` process, so import time counts, as it does for a user.
Targets (issue 4, 2 CPU cores): each full protocol <= 180 s cold and <= 20 s with the models cached.
"curve" is the AD protocol at each of the 5 contamination ratios 0-20% in one command, so its time is
also given per ratio and the targets are checked per ratio (5 protocols, 5 x the target in all).
The headline numbers come from the cold run's JSON (mean ± std over splits or normal classes, in %).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROTOCOLS = {
    "osr": ["--setting", "osr", "--known", "6", "--splits", "5"],
    "nd": ["--setting", "nd"],
    "ad": ["--setting", "ad", "--contamination", "0.05"],
    "curve": ["--setting", "ad", "--curve"],
}
TARGET_COLD, TARGET_WARM = 180.0, 20.0
PROTOCOLS_PER_RUN = {"curve": 5}  # the curve runs the AD protocol once per ratio (protocols.contamination_curve)


def run_cli(args: list[str], cache: str, out: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ood_core", "run", "--dataset", "digits", *args, "--json", out,
                    "--cache-dir", cache, "--quiet"], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def headline(name: str, doc: dict) -> dict:
    """The figures the issue asks for, from a protocol's JSON."""
    from ood_core.compare import summarise_by

    rows = [r for r in doc["results"] if r["ood_set"] in ("unknown", "novel", "anomalous")]
    if name == "osr":
        summ = summarise_by(rows, ("detector",), ("auroc", "oscr"))
        best = max(summ, key=lambda s: s["auroc_mean"] or -1)
        msp = next(s for s in summ if s["detector"] == "msp")
        return {"closed_set_accuracy": [100 * doc["id_accuracy"], 100 * doc["id_accuracy_std"]],
                "best": best["detector"], "best_auroc": [100 * best["auroc_mean"], 100 * best["auroc_std"]],
                "best_oscr": [100 * best["oscr_mean"], 100 * best["oscr_std"]],
                "msp_auroc": [100 * msp["auroc_mean"], 100 * msp["auroc_std"]]}
    keys = ("method", "contamination") if name == "curve" else ("method",)
    summ = summarise_by(rows, keys)
    if name == "curve":
        curve: dict[str, dict] = {}
        for s in summ:
            curve.setdefault(s["method"], {})[f"{100 * s['contamination']:.0f}%"] = round(100 * s["auroc_mean"], 1)
        return {"mean_auroc_by_ratio": curve}
    table = {s["method"]: [round(100 * s["auroc_mean"], 1), round(100 * s["auroc_std"], 1)] for s in summ}
    best = max(table, key=lambda m: table[m][0])
    return {"best": best, "best_auroc": table[best], "per_method": table}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PROTOCOLS), help="comma-separated: " + ", ".join(PROTOCOLS))
    ap.add_argument("--warm-repeats", type=int, default=3)
    ap.add_argument("--json", help="write the report here too")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in PROTOCOLS]
    if bad:
        ap.error(f"unknown protocol(s) {', '.join(bad)}; choose from {', '.join(PROTOCOLS)}")
    report = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"ood-bench-{name}-") as tmp:
            out = str(Path(tmp) / "out.json")
            cold = run_cli(PROTOCOLS[name], tmp, out)
            doc = json.loads(Path(out).read_text())
            warm = [run_cli(PROTOCOLS[name], tmp, str(Path(tmp) / "warm.json")) for _ in range(args.warm_repeats)]
        report[name] = {"command": "python -m ood_core run " + " ".join(PROTOCOLS[name]),
                        "cold_s": round(cold, 1), "warm_median_s": round(statistics.median(warm), 1) if warm else None,
                        "warm_s": [round(w, 1) for w in warm], **headline(name, doc)}
        r = report[name]
        k = PROTOCOLS_PER_RUN.get(name, 1)
        r["protocols"] = k
        ok = r["cold_s"] <= k * TARGET_COLD and (r["warm_median_s"] is None or r["warm_median_s"] <= k * TARGET_WARM)
        per = (f"; per protocol {r['cold_s'] / k:.1f} s cold, {(r['warm_median_s'] or 0) / k:.1f} s warm" if k > 1
               else "")
        print(f"{name}: cold {r['cold_s']} s, warm median {r['warm_median_s']} s {r['warm_s']}{per} "
              f"(targets per protocol {TARGET_COLD:.0f} / {TARGET_WARM:.0f} s: {'met' if ok else 'NOT met'})",
              flush=True)
        print("   " + json.dumps({k: v for k, v in r.items() if k not in ("command", "cold_s", "warm_s",
                                                                           "warm_median_s", "protocols")}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
