"""Regenerate README.md's method table from the detector registry.

    python scripts/gen_readme.py           # rewrite the part between the methods markers
    python scripts/gen_readme.py --check   # exit 1 with a diff when README.md is stale

Only the text between `<!-- methods:start -->` and `<!-- methods:end -->` is generated: a count sentence and
one row per detector (name, family, decision score, reference); everything else in README.md is left alone.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

README = ROOT / "README.md"
START = "<!-- methods:start -->"
END = "<!-- methods:end -->"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell: `|` escaped as an HTML entity."""
    return text.replace("|", "&#124;")


def reference_cell(refs) -> str:
    """The short form of each reference, linked to its paper when there is a url."""
    return "; ".join(f"[{cell(r.short())}]({r.url})" if r.url else cell(r.short()) for r in refs)


def methods_section() -> str:
    """The generated Markdown that goes between the markers (without the markers)."""
    from ood_core.detectors import FAMILIES, REGISTRY

    families = {cls.family for cls in REGISTRY.values()}
    rerun = [cls.title for cls in REGISTRY.values() if cls.runs_network]
    train = [cls.title for cls in REGISTRY.values() if cls.trains_network]
    regime = [f"{cls.title}, regime {' or '.join(cls.regimes)}" for cls in REGISTRY.values() if cls.regimes]
    lines = [
        f"{len(REGISTRY)} detectors in {len(families)} families. Post-hoc methods score the cached outputs of one "
        f"forward pass; {len(rerun)} run the network again (batched): {', '.join(rerun)}. "
        f"{len(train)} train{'s' if len(train) == 1 else ''} a small network on the cached features first: "
        f"{', '.join(train)}. {len(regime)} score{'s' if len(regime) == 1 else ''} a classifier trained in a regime "
        f"of its own: {'; '.join(regime)}.",
        "",
        "| name | family | decision score (higher = more unfamiliar) | reference |",
        "|---|---|---|---|",
    ]
    for name, cls in REGISTRY.items():
        assert cls.family in FAMILIES, name
        lines.append(f"| `{name}` | {cls.family} | {cell(cls.formula)} | {reference_cell(cls.references())} |")
    return "\n".join(lines)


def render(readme: str) -> str:
    """README text with the section between the markers replaced by methods_section()."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise ValueError(f"README.md needs exactly one {START} ... {END} pair")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{methods_section()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff when README.md is stale")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if current == wanted:
            return 0
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(keepends=True), wanted.splitlines(keepends=True),
                                                   "README.md", "README.md (generated)"))
        print("\nREADME.md is stale: run `python scripts/gen_readme.py`", file=sys.stderr)
        return 1
    if current != wanted:
        README.write_text(wanted, encoding="utf-8")
        print("README.md: methods table regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
