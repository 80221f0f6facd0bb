"""Hostile and broken checkpoints: is each refused (or repaired) with its message, and what memory does a refusal cost?

    PYTHONPATH=. .venv/bin/python scripts/bench_refusals.py

Each case runs in a fresh process that builds the default experiment's benchmark, measures its peak resident
memory (VmHWM), offers the file to `load_user_model` (uploads) or plants it in the model cache and calls
`get_model` (cached checkpoints), and reports the message and the rise of the peak. Issue 10's figure: every
refusal raises the peak by at most 100 MB. The zip bomb is 1 GiB of zeros packed into about 1 MB.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("zip bomb (1 GiB of zeros in ~1 MB)", "NaN weights", "pickle that runs code", "wrong architecture",
         "truncated upload", "flipped bytes in a cached checkpoint", "truncated cached checkpoint")


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def make_file(case: str, folder: Path, spec, bench) -> Path:
    """The hostile or broken file of one case, written under `folder`."""
    import torch

    from ood_core.models import build_model, checkpoint_path, get_model

    good = build_model(spec.model, bench.input_shape[0], bench.num_classes, bench.input_shape[-1]).state_dict()
    path = folder / "upload.pt"
    if case.startswith("zip bomb"):
        raw = io.BytesIO()
        torch.save({"w": torch.zeros(2**28)}, raw)  # 1 GiB of float32 zeros
        with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as src, \
                zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
    elif case == "NaN weights":
        torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in good.items()}, path)
    elif case == "pickle that runs code":
        marker = folder / "pwned"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"state_dict": Evil()}, path)
    elif case == "wrong architecture":
        torch.save(build_model(spec.model, 3, 7).state_dict(), path)
    elif case == "truncated upload":
        buf = io.BytesIO()
        torch.save(good, buf)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    else:  # a cached checkpoint, damaged in place
        get_model(spec, bench, cache_dir=folder / "cache")
        path = checkpoint_path(spec, folder / "cache")
        data = bytearray(path.read_bytes())
        if case.startswith("flipped"):
            start = data.find(b"data/0") + 200  # inside the first tensor's bytes, past its zip header
            for i in range(start, start + 1000):
                data[i] ^= 0xFF
        else:
            data = data[: len(data) // 2]
        path.write_bytes(bytes(data))
    return path


def _setup():
    from ood_core import Spec
    from ood_core.data import build_benchmark
    from ood_core.spec import TrainConfig

    spec = Spec(training=TrainConfig(epochs=1))
    return spec, build_benchmark(spec, ())


def make(case: str, folder: Path) -> None:
    """In its own process, so building the file (the bomb is 1 GiB in memory) never counts towards the refusal."""
    spec, bench = _setup()
    path = make_file(case, folder, spec, bench)
    (folder / "path.txt").write_text(str(path))


def child(case: str, folder: Path) -> dict:
    from ood_core.models import get_model, load_user_model

    spec, bench = _setup()
    path = Path((folder / "path.txt").read_text())
    before = vm_hwm_mib()
    outcome, message = "accepted", ""
    if "cached" in case:
        res = get_model(spec, bench, cache_dir=folder / "cache")
        outcome = "repaired (moved aside, retrained)" if res.note else "loaded"
        message = res.note
    else:
        try:
            load_user_model(str(path), spec, bench)
        except ValueError as e:
            outcome, message = "refused", str(e)
    rise = vm_hwm_mib() - before
    return {"case": case, "outcome": outcome, "peak_rise_mib": round(rise, 1), "message": message,
            "code_ran": (folder / "pwned").exists(), "file_mib": round(path.stat().st_size / 2**20, 2)}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] in ("--make", "--child"):
        if sys.argv[1] == "--make":
            make(sys.argv[2], Path(sys.argv[3]))
        else:
            print(json.dumps(child(sys.argv[2], Path(sys.argv[3]))))
        return 0
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            for step in ("--make", "--child"):
                out = subprocess.run([sys.executable, __file__, step, case, d], capture_output=True, text=True,
                                     timeout=600, env=env)
                if out.returncode:
                    print(out.stderr[-2000:], file=sys.stderr)
                    return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| case | outcome | peak memory rise | code ran | message |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['outcome']} | {r['peak_rise_mib']} MiB | {'YES' if r['code_ran'] else 'no'} | "
              f"{r['message'][:160]}{'…' if len(r['message']) > 160 else ''} |")
    refusals = [r["peak_rise_mib"] for r in rows if r["outcome"] == "refused"]
    repairs = [r["peak_rise_mib"] for r in rows if r["outcome"].startswith("repaired")]
    print(f"\nlargest peak rise during a refusal: {max(refusals)} MiB (target: at most 100 MB)")
    if repairs:
        print(f"a repair retrains the model: its peak rise ({max(repairs)} MiB) is that of any first training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
