"""Short messages for people: error texts cut to what a page or a terminal line can show."""
from __future__ import annotations

import re


def brief(message: str, limit: int = 240) -> str:
    """The first line of an error message, short (PyTorch's load errors run to pages of advice).

    "text (SomeError: long details...)" becomes "text (SomeError)"; other long lines are cut at a word.
    """
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    if len(first) <= limit:
        return first
    m = re.match(r"(.+?) \((\w+(?:Error|Exception|Warning)):", first)
    if m and len(m.group(1)) <= limit:
        return f"{m.group(1)} ({m.group(2)})"
    return first[:limit].rsplit(" ", 1)[0] + " …"


def provenance_line(prov: dict) -> str:
    """A checkpoint's provenance in one line: "torch 2.14.1 · 1 training thread · cpu · trained in 8.9 s ·
    written 2026-11-29 23:40 UTC" (the parts it has; "" when it has none)."""
    if not prov:
        return ""
    parts = []
    if prov.get("torch"):
        parts.append(f"torch {prov['torch']}")
    if prov.get("threads"):
        n = int(prov["threads"])
        parts.append(f"{n} training thread{'s' if n != 1 else ''}")
    if prov.get("device"):
        parts.append(str(prov["device"]))
    if prov.get("train_seconds"):
        parts.append(f"trained in {float(prov['train_seconds']):.1f} s")
    written = prov.get("written_utc")
    parts.append(f"written {written[:16].replace('T', ' ')} UTC" if written else "not saved to disk")
    return " · ".join(parts)
