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
