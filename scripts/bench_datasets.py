"""Measure the real-data figures of the datasets issue (measured here, never asserted in tests).

    (a) the packaged MNIST sample (5,000 images, "mnist-sample"): small CNN test accuracy >= 97%, training <= 60 s
    (b) MNIST-format data at 70,000 images (the sample replicated 14x, written as idx files, read through the
        registered "mnist" entry): one forward pass of every split <= 30 s; every post-hoc detector on the cached
        outputs <= 20 s in all; peak RSS <= 3 GiB
    (c) CIFAR-format data at 60,000 32x32x3 images (random, written as CIFAR-10 pickled batches) built into a
        benchmark and run through one forward pass: peak RSS <= 4 GiB
    (d) a 20 MB zip of 5,000 PNGs registered as a user dataset, then its benchmark built: seconds

Each case runs in its own fresh subprocess (peak RSS = its resource.getrusage(RUSAGE_SELF).ru_maxrss); the data
files are written beforehand by this parent process into a temporary data root, so writing them never counts.
Beside the wall-clock times stand the process's CPU seconds and the machine's load average: on a busy shared
machine the wall clock says more about the other users than about the code.

    PYTHONPATH=. .venv/bin/python scripts/bench_datasets.py             # the issue's sizes (many minutes on 2 cores)
    PYTHONPATH=. .venv/bin/python scripts/bench_datasets.py --quick     # small sizes: checks the script only
    PYTHONPATH=. .venv/bin/python scripts/bench_datasets.py --only b,c --json out.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
CASES = ("a", "b", "c", "d")
FULL = {"sample_epochs": 15, "mnist_copies": 14, "warm_epochs": 5, "cifar_images": 60_000, "zip_images": 5_000,
        "zip_mb": 20.0, "timeout": 3600}
QUICK = {"sample_epochs": 1, "mnist_copies": 1, "warm_epochs": 1, "cifar_images": 3_000, "zip_images": 300,
         "zip_mb": 1.2, "timeout": 600}


# --- in the child: one case, reported as JSON lines on stdout ------------------------------------------------------

def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def cpu_seconds() -> float:
    """CPU time of this process, all its threads: on a busy shared machine it moves far less than the wall clock
    (a single-threaded step's CPU time is about its wall time on an idle machine; a 2-thread step's about twice)."""
    return time.process_time()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def untrained_or_short(spec, bench, device: str, epochs: int, per_class: int = 0):
    """The small CNN trained `epochs` on at most `per_class` training images per class (0 epochs: its seeded
    initial weights). Its weights do not change what a forward pass costs; they make the features the detectors
    fit look like a classifier's (SHE and OpenMax refuse, at no cost, a model that never predicts some class)."""
    import torch

    from ood_core.data import build_benchmark
    from ood_core.models.train import new_model, train_model

    if epochs <= 0:
        return new_model(spec, bench, torch.Generator().manual_seed(spec.seed), device)
    small = build_benchmark(spec.replace(train_per_class=per_class), ood_sets=())  # the data read once, kept in memory
    model = train_model(small.spec, small, None, device).model
    del small
    return model


def case_a(args) -> None:
    from ood_core import Spec, TrainConfig, pipeline

    spec = Spec(dataset="mnist-sample", image_size=28, training=TrainConfig(epochs=args.sample_epochs))
    with tempfile.TemporaryDirectory(prefix="bench-datasets-cache-") as cache:
        t0, c0 = time.perf_counter(), cpu_seconds()
        exp = pipeline.prepare(spec, cache_dir=cache, device=args.device, ood_sets=())
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    emit(event="result", case="a", device=exp.device, epochs=args.sample_epochs, n_train=len(exp.bench.train),
         n_test=len(exp.bench.test), accuracy=exp.id_accuracy, train_seconds=exp.training.seconds,
         prepare_seconds=wall, prepare_cpu_seconds=cpu, peak_rss=peak_rss_bytes())


def case_b(args) -> None:
    from ood_core import Spec, TrainConfig, pipeline
    from ood_core.data import build_benchmark
    from ood_core.detectors import REGISTRY
    from ood_core.device import default_device
    from ood_core.settings import detectors_for

    device = args.device or default_device()
    spec = Spec(dataset="mnist", image_size=28, training=TrainConfig(epochs=max(1, args.warm_epochs)))
    t0 = time.perf_counter()
    bench = build_benchmark(spec)  # reads the idx files: the first use of the data in this process
    build = time.perf_counter() - t0
    model = untrained_or_short(spec, bench, device, args.warm_epochs, args.warm_per_class)
    sizes = {k: len(v) for k, v in bench.splits().items()}
    emit(event="built", case="b", seconds=build, sizes=sizes, peak_rss=peak_rss_bytes())
    t0, c0 = time.perf_counter(), cpu_seconds()
    exp = pipeline.prepare(spec, model=model, bench=bench, device=device)  # bench given: only the forward passes
    forward = time.perf_counter() - t0
    emit(event="forward", case="b", seconds=forward, cpu_seconds=cpu_seconds() - c0, images=sum(sizes.values()),
         peak_rss=peak_rss_bytes())
    leave_out = {n.strip() for n in args.skip_detectors.split(",") if n.strip()}
    names = [n for n in detectors_for("ood", spec.model, bench.num_classes)
             if not REGISTRY[n].runs_network and n not in leave_out]
    skipped = [n for n in detectors_for("ood", spec.model, bench.num_classes) if REGISTRY[n].runs_network]
    def started(i: int, n: int, name: str) -> None:  # the last event names the detector a timeout stopped
        if name:
            emit(event="detector", case="b", name=name, started=time.perf_counter() - t0)

    t0, c0 = time.perf_counter(), cpu_seconds()
    rows, _ = pipeline.evaluate(exp, names, on_progress=started)
    detectors, detectors_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    per = {r["detector"]: {"seconds": r["seconds"], "error": r["error"]} for r in rows}
    emit(event="result", case="b", device=device, warm_epochs=args.warm_epochs, warm_per_class=args.warm_per_class,
         accuracy=exp.id_accuracy,
         skipped_by_flag=sorted(leave_out), build_seconds=build,
         forward_seconds=forward, images=sum(sizes.values()), sizes=sizes, detector_seconds=detectors,
         detector_cpu_seconds=detectors_cpu,
         detectors=per, network_detectors_left_out=skipped, peak_rss=peak_rss_bytes())


def case_c(args) -> None:
    from ood_core import Spec, pipeline
    from ood_core.data import build_benchmark
    from ood_core.device import default_device

    device = args.device or default_device()
    spec = Spec(dataset="cifar10", image_size=32)
    t0 = time.perf_counter()
    bench = build_benchmark(spec)
    build = time.perf_counter() - t0
    sizes = {k: len(v) for k, v in bench.splits().items()}
    emit(event="built", case="c", seconds=build, sizes=sizes, peak_rss=peak_rss_bytes())
    model = untrained_or_short(spec, bench, device, 0)
    t0 = time.perf_counter()
    pipeline.prepare(spec, model=model, bench=bench, device=device)
    forward = time.perf_counter() - t0
    emit(event="result", case="c", device=device, build_seconds=build, forward_seconds=forward,
         images=sum(sizes.values()), sizes=sizes, peak_rss=peak_rss_bytes())


def case_d(args) -> None:
    from ood_core import Spec
    from ood_core.data import build_benchmark
    from ood_core.data.datasets import register_user_dataset

    t0 = time.perf_counter()
    info = register_user_dataset("bench-zip", args.zip_path)
    register = time.perf_counter() - t0
    bench = build_benchmark(Spec(dataset="bench-zip", image_size=info.default_size))
    total = time.perf_counter() - t0
    emit(event="result", case="d", register_seconds=register, build_seconds=total - register, seconds=total,
         images=len(bench.train) + len(bench.val) + len(bench.test), side=info.native_size,
         channels=info.channels, classes=info.num_classes, peak_rss=peak_rss_bytes())


def child(args) -> int:
    sys.path.insert(0, str(ROOT))
    importlib.import_module("torch")  # before any timing, as in the running app (its memory counts in the RSS)
    {"a": case_a, "b": case_b, "c": case_c, "d": case_d}[args.child](args)
    return 0


# --- in the parent: the data files, the subprocesses, the table ----------------------------------------------------

def write_idx(path: Path, arr) -> None:
    """A plain idx file of unsigned bytes, as torchvision leaves it after a download (read through torchvision)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def write_mnist_copies(root: Path, copies: int) -> dict:
    """The 5,000-image MNIST sample replicated `copies` times as MNIST's idx files. Every seventh image is a test
    image: 10,000 of 70,000 at 14 copies, as in MNIST, each sample image twice (7 and 5,000 are coprime). Not the
    last seventh: the sample is sorted by digit, so at fewer copies that would be 8s and 9s only."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from ood_core.data import sources

    sample = sources.read_mnist_sample()
    images = np.tile(sample.images[:, 0], (copies, 1, 1))
    labels = np.tile(sample.labels, copies).astype(np.uint8)
    test = np.arange(len(labels)) % 7 == 6
    raw = root / "MNIST" / "raw"
    for name, arr in zip(sources.IDX_FILES, (images[~test], labels[~test], images[test], labels[test])):
        write_idx(raw / name, arr)
    return {"images": len(labels), "train": int((~test).sum()), "test": int(test.sum())}


def write_cifar10(root: Path, n: int, seed: int = 0) -> dict:
    """`n` random 32x32x3 images as CIFAR-10's pickled batches: five train batches and a test batch (n / 6 each)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = n // 6
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{i}.png" for i in range(per)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per, "num_vis": 3072,
                     "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                     "truck"]}, f, protocol=2)
    return {"images": 6 * per}


def write_png_zip(path: Path, n: int, megabytes: float, classes: int = 10, seed: int = 0) -> dict:
    """`n` random RGB PNGs in `classes` class folders, zipped (stored: PNGs are compressed already), their side
    chosen so the zip is about `megabytes` (random pixels do not compress: a PNG is about 3 side^2 bytes)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    side = max(8, int(round((megabytes * 1e6 / n / 3) ** 0.5)))
    t0 = time.perf_counter()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
            zf.writestr(f"images/class{i % classes}/{i:05d}.png", buf.getvalue())
    return {"images": n, "side": side, "bytes": path.stat().st_size, "write_seconds": time.perf_counter() - t0}


def run_child(case: str, args, env: dict, extra: list[str]) -> dict:
    """Run one case in a fresh interpreter; collect its JSON lines (all of them, even when it times out)."""
    cmd = [sys.executable, __file__, "--child", case, *extra]
    if args.device:
        cmd += ["--device", args.device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # the child this call started, by its own handle
        out, err = proc.communicate()
        timed_out = True
    events = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    result = next((e for e in events if e.get("event") == "result"), None)
    return {"case": case, "events": events, "result": result, "timed_out": timed_out, "returncode": proc.returncode,
            "stderr_tail": "" if result else err[-2000:], "load_average": os.getloadavg()}


def fmt_s(s) -> str:
    return "–" if s is None else f"{s:.1f} s"


def fmt_gib(b) -> str:
    return "–" if b is None else f"{b / GIB:.2f} GiB"


def verdict(ok) -> str:
    return "–" if ok is None else ("yes" if ok else "**no**")


def failure(run: dict, args) -> str:
    if run["timed_out"]:
        last = [e for e in run["events"] if e.get("event") == "detector"]
        during = f" (while {last[-1]['name']} ran)" if last else ""
        return f"timed out after {args.timeout} s{during}"
    lines = [ln for ln in run["stderr_tail"].strip().splitlines() if ln.strip()]
    return f"failed (exit {run['returncode']}): {lines[-1] if lines else 'no message'}"


def table_rows(runs: dict, info: dict, args) -> list[tuple[str, str, str, str]]:
    rows = []
    if "a" in runs:
        r = runs["a"]["result"]
        what = f"(a) MNIST sample, small CNN {args.sample_epochs} epochs"
        if r is None:
            rows.append((what, "", failure(runs["a"], args), "**no**"))
        else:
            rows.append((f"{what}: test accuracy ({r['n_test']:,} images)", "≥ 97%", f"{100 * r['accuracy']:.2f}%",
                         verdict(r["accuracy"] >= 0.97)))
            rows.append((f"{what}: training ({r['n_train']:,} images, {r['device']})", "≤ 60 s",
                         f"{r['train_seconds']:.1f} s (prepare {r['prepare_seconds']:.1f} s, CPU "
                         f"{r.get('prepare_cpu_seconds', 0):.1f} s)",
                         verdict(r["train_seconds"] <= 60)))
    if "b" in runs:
        run, r = runs["b"], runs["b"]["result"]
        n = info["b"]["images"]
        what = f"(b) MNIST format, {n:,} images"
        built = next((e for e in run["events"] if e.get("event") == "built"), None)
        forward = next((e for e in run["events"] if e.get("event") == "forward"), None)
        rows.append((f"{what}: load + split + normalise", "–", fmt_s(built and built["seconds"]), "–"))
        rows.append((f"{what}: one forward pass of every split "
                     f"({forward['images']:,} images)" if forward else f"{what}: one forward pass of every split",
                     "≤ 30 s", fmt_s(forward and forward["seconds"])
                     + (f" (CPU {forward['cpu_seconds']:.1f} s)" if forward else ""),
                     verdict(forward and forward["seconds"] <= 30) if forward else "**no**"))
        if r is None:
            rows.append((f"{what}: post-hoc detectors", "≤ 20 s in all", failure(run, args), "**no**"))
        else:
            per = r["detectors"]
            slow = sorted(per, key=lambda d: -per[d]["seconds"])[:4]
            errs = [d for d in per if per[d]["error"]]
            flag = f"; left out by --skip-detectors: {', '.join(r['skipped_by_flag'])}" if r["skipped_by_flag"] else ""
            rows.append((f"{what}: {len(per)} post-hoc detectors fitted + scored (KNN included; "
                         f"left out, they run the network: {', '.join(r['network_detectors_left_out'])}{flag}; "
                         f"model trained {r['warm_epochs']} epochs on {r['warm_per_class']} per class, test accuracy "
                         f"{100 * r['accuracy']:.1f}%)",
                         "≤ 20 s in all", f"{r['detector_seconds']:.1f} s (CPU {r['detector_cpu_seconds']:.1f} s; "
                         "slowest: "
                         + ", ".join(f"{d} {per[d]['seconds']:.1f} s" for d in slow) + ")"
                         + (f"; errors: {', '.join(errs)}" if errs else ""),
                         verdict(r["detector_seconds"] <= 20)))
            rows.append((f"{what}: peak RSS", "≤ 3 GiB", fmt_gib(r["peak_rss"]), verdict(r["peak_rss"] <= 3 * GIB)))
    if "c" in runs:
        r = runs["c"]["result"]
        what = f"(c) CIFAR format, {info['c']['images']:,} images 32×32×3"
        if r is None:
            rows.append((f"{what}: benchmark + one forward pass", "≤ 4 GiB", failure(runs["c"], args), "**no**"))
        else:
            rows.append((f"{what}: benchmark + one forward pass of {r['images']:,} images, peak RSS", "≤ 4 GiB",
                         f"{fmt_gib(r['peak_rss'])} (build {r['build_seconds']:.1f} s, forward "
                         f"{r['forward_seconds']:.1f} s, {r['device']})", verdict(r["peak_rss"] <= 4 * GIB)))
    if "d" in runs:
        r, z = runs["d"]["result"], info["d"]
        what = (f"(d) zip of {z['images']:,} PNGs ({z['bytes'] / 1e6:.1f} MB, {z['side']}×{z['side']}×3): "
                f"register + build benchmark")
        if r is None:
            rows.append((what, "–", failure(runs["d"], args), "–"))
        else:
            rows.append((what, "– (seconds)", f"{r['seconds']:.1f} s (decode {r['register_seconds']:.1f} s, build "
                         f"{r['build_seconds']:.1f} s; peak RSS {fmt_gib(r['peak_rss'])})", "–"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"small sizes to check the script ({', '.join(f'{k}={v}' for k, v in QUICK.items())}); "
                         "the verdicts then do not speak for the issue's figures")
    ap.add_argument("--only", default=",".join(CASES), help="cases to run, comma-separated (default a,b,c,d)")
    ap.add_argument("--sample-epochs", type=int, help=f"(a) training epochs (default {FULL['sample_epochs']})")
    ap.add_argument("--mnist-copies", type=int,
                    help=f"(b) copies of the 5,000-image sample (default {FULL['mnist_copies']})")
    ap.add_argument("--warm-epochs", type=int,
                    help=f"(b) epochs the model is trained on --warm-per-class images per class before the timings "
                         f"(0: untrained; default {FULL['warm_epochs']}, quick {QUICK['warm_epochs']}); its weights do "
                         "not change the cost of a forward pass, but SHE and OpenMax refuse at once (and cost "
                         "nothing) when some class is never predicted")
    ap.add_argument("--warm-per-class", type=int, default=300, help="(b) see --warm-epochs (default 300)")
    ap.add_argument("--skip-detectors", default="", help="(b) post-hoc detectors to leave out, comma-separated")
    ap.add_argument("--cifar-images", type=int, help=f"(c) images in all (default {FULL['cifar_images']:,})")
    ap.add_argument("--zip-images", type=int, help=f"(d) PNGs in the zip (default {FULL['zip_images']:,})")
    ap.add_argument("--zip-mb", type=float, help=f"(d) about this many MB of zip (default {FULL['zip_mb']:g})")
    ap.add_argument("--timeout", type=int,
                    help=f"seconds per case (default {FULL['timeout']}, quick {QUICK['timeout']})")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the library's, cuda when available)")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="also write everything measured as JSON to PATH (no PATH: print it after the table)")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--zip-path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    bad = [c for c in only if c not in CASES]
    if bad:
        ap.error(f"--only: unknown case(s) {', '.join(bad)}; choose from {', '.join(CASES)}")

    runs, info = {}, {}
    load_start = os.getloadavg()  # the machine's load is part of every figure (a shared 2-core machine)
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
        tmp = Path(tmp)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        base_env = {**os.environ, "PYTHONPATH": path, "OOD_EXPLORER_CACHE": str(tmp / "cache")}
        for case in only:
            env, extra = dict(base_env), []
            if case == "a":
                extra = ["--sample-epochs", str(args.sample_epochs)]
            elif case == "b":
                info["b"] = write_mnist_copies(tmp / "root-b", args.mnist_copies)
                env["OOD_DATA_ROOT"] = str(tmp / "root-b")
                extra = ["--warm-epochs", str(args.warm_epochs), "--warm-per-class", str(args.warm_per_class),
                         "--skip-detectors", args.skip_detectors]
            elif case == "c":
                info["c"] = write_cifar10(tmp / "root-c", args.cifar_images)
                env["OOD_DATA_ROOT"] = str(tmp / "root-c")
            else:
                info["d"] = write_png_zip(tmp / "pngs.zip", args.zip_images, args.zip_mb)
                extra = ["--zip-path", str(tmp / "pngs.zip")]
            print(f"[{case}] running ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            runs[case] = run_child(case, args, env, extra)
            print(f"[{case}] done in {time.perf_counter() - t0:.1f} s, load average "
                  f"{runs[case]['load_average'][0]:.1f}", file=sys.stderr, flush=True)

    rows = table_rows(runs, info, args)
    load = os.getloadavg()
    quick = " (--quick: reduced sizes; the verdicts do not speak for the issue's figures)" if args.quick else ""
    per_case = ", ".join(f"{c} {r['load_average'][0]:.1f}" for c, r in runs.items())
    print(f"Datasets benchmark{quick} — {os.cpu_count()} CPU cores, load average (1 min) {load_start[0]:.1f} at the "
          f"start, after each case {per_case}, {load[0]:.1f} at the end\n")
    print("| figure | target | measured | met? |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        doc = {"quick": args.quick, "sizes": {k: getattr(args, k) for k in FULL}, "warm_per_class": args.warm_per_class,
               "cpu_count": os.cpu_count(), "load_average": load, "load_average_start": load_start, "data": info,
               "runs": runs,
               "table": [dict(zip(("figure", "target", "measured", "met"), r)) for r in rows]}
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print("\n" + text)
        else:
            Path(args.json).write_text(text)
    # exit 1 when a case gave no result, or (at the sizes) when a figure misses its target
    failed = [c for c, r in runs.items() if r["result"] is None]
    missed = [r for r in rows if r[3] == "**no**"]
    return 1 if failed or (missed and not args.quick) else 0


if __name__ == "__main__":
    raise SystemExit(main())
