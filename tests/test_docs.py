"""Docs come from the code: README's method table matches the registry, every detector cites a checked paper."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from ood_core.detectors import REGISTRY, Reference

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_readme", ROOT / "scripts" / "gen_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


# --- README ------------------------------------------------------------------------------------------

def test_readme_methods_section_is_what_the_generator_makes_from_the_registry():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(gen.START, 1)[1].split(gen.END, 1)[0]
    assert section == "\n" + gen.methods_section() + "\n", "README.md is stale: run `python scripts/gen_readme.py`"


def test_the_table_has_one_row_per_detector_and_the_count_sentence_says_so():
    text = gen.methods_section()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(REGISTRY)
    assert all(r.count(" | ") == 3 for r in rows), "a `|` inside a cell must be escaped"
    assert text.startswith(f"{len(REGISTRY)} detectors in ")


def test_rows_link_the_short_reference_to_the_paper():
    rows = {line.split("`")[1]: line for line in gen.methods_section().splitlines() if line.startswith("| `")}
    assert rows["msp"].endswith("| [Hendrycks & Gimpel, ICLR 2017](https://arxiv.org/abs/1610.02136) |")
    assert "&#124;&#124;" in rows["knn"]  # the formula's norm bars, escaped


def test_check_mode_fails_with_a_diff_on_a_stale_readme_and_rewriting_fixes_it(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "README.md"
    stale.write_text(f"# title\n\n{gen.START}\nold table\n{gen.END}\n\nafter\n", encoding="utf-8")
    monkeypatch.setattr(gen, "README", stale)
    assert gen.main(["--check"]) == 1
    assert "-old table" in capsys.readouterr().out
    assert gen.main([]) == 0
    text = stale.read_text(encoding="utf-8")
    assert text.startswith("# title\n\n") and text.endswith(f"{gen.END}\n\nafter\n") and "old table" not in text
    assert gen.main(["--check"]) == 0


def test_render_refuses_a_readme_without_one_pair_of_markers():
    with pytest.raises(ValueError, match="methods:start"):
        gen.render("no markers here")
    with pytest.raises(ValueError):
        gen.render(f"{gen.END}\n{gen.START}\n")


# --- references --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_detector_cites_a_complete_reference(name):
    refs = REGISTRY[name].references()
    assert refs, f"{name} has no reference"
    for r in refs:
        assert isinstance(r, Reference)
        assert r.authors.strip() and r.title.strip() and r.venue.strip(), r
        assert isinstance(r.year, int) and 1990 <= r.year <= 2026, r
        assert r.url == "" or r.url.startswith("https://"), r
        assert str(r.year) not in r.venue, f"{name}: the venue should not repeat the year: {r.venue!r}"


def test_one_paper_is_cited_the_same_way_everywhere():
    by_title: dict[str, Reference] = {}
    for cls in REGISTRY.values():
        for r in cls.references():
            assert by_title.setdefault(r.title, r) == r, f"{r.title!r} is cited two different ways"


def test_reference_formats():
    one = Reference("Claude E. Shannon", "A Mathematical Theory of Communication", "Bell System Technical Journal",
                    1948)
    two = Reference("Dan Hendrycks, Kevin Gimpel", "A Baseline", "ICLR", 2017, "https://arxiv.org/abs/1610.02136")
    many = Reference("Weitang Liu, Xiaoyun Wang, John D. Owens, Yixuan Li", "Energy-based OOD", "NeurIPS", 2020)
    assert one.short() == "Shannon, Bell System Technical Journal 1948"
    assert two.short() == "Hendrycks & Gimpel, ICLR 2017"
    assert many.short() == "Liu et al., NeurIPS 2020"
    assert two.full() == "Dan Hendrycks, Kevin Gimpel, A Baseline, ICLR 2017"
    assert two.markdown() == "Dan Hendrycks, Kevin Gimpel, [A Baseline](https://arxiv.org/abs/1610.02136), ICLR 2017"
    assert many.markdown() == many.full()  # no url, no link


def test_known_corrections_stay_fixed():
    gram = REGISTRY["gram"].references()
    assert [(r.short(), r.title) for r in gram] == [
        ("Sastry & Oore, ICML 2020", "Detecting Out-of-Distribution Examples with Gram Matrices")]
    svdd = REGISTRY["model_score"].references()[0]
    assert (svdd.short(), svdd.title) == ("Ruff et al., ICML 2018", "Deep One-Class Classification")


# --- CONTRIBUTING.md ---------------------------------------------------------------------------------

CONTRIBUTING = ROOT / "CONTRIBUTING.md"
PLACEHOLDER = re.compile(r"[<>*]|\.\.\.")  # `pages/<name>.py`, `st.cache_*`: not real names


def _contributing() -> tuple[str, list[str], str]:
    """The text, its inline code spans (outside fenced blocks) and its first fenced block (the architecture)."""
    text = CONTRIBUTING.read_text(encoding="utf-8")
    fences = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return text, inline, fences[0]


def _python_sources() -> str:
    files = [ROOT / "app.py", *[p for d in ("ood_core", "pages", "scripts", "tests") for p in (ROOT / d).rglob("*.py")]]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def test_every_path_contributing_mentions_exists():
    text, inline, _ = _contributing()
    paths = set(re.findall(r"(?<![\w/.])((?:ood_core|pages|scripts|tests|data|docs)/[\w./<>*-]*)", text))
    paths |= {t for t in inline if re.fullmatch(r"[\w.-]+\.(py|md|txt|ini|sh|toml)", t)}
    paths = {p.rstrip(".") for p in paths if not PLACEHOLDER.search(p)}
    assert {"ood_core/detectors/base.py", "pages/_support.py", "scripts/gen_readme.py"} <= paths
    every_file = {p.name for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts}
    missing = [p for p in sorted(paths) if not ((ROOT / p).exists() or ("/" not in p and p in every_file))]
    assert not missing, f"CONTRIBUTING.md names files that do not exist: {missing}"


def test_every_function_and_name_contributing_mentions_is_defined():
    _, inline, architecture = _contributing()
    calls = {m.group(1) for t in inline if (m := re.fullmatch(r"(?:\w+\.)*(\w+)\(\)", t))}
    calls |= {m.group(1) for t in inline if (m := re.match(r"(register_\w+)\(", t))}  # register_x(args)
    names = {t for t in inline if re.fullmatch(r"[A-Z][A-Za-z0-9_]*", t)}
    # the picture's right-hand column: the module, then what it owns ("ood_core/spec.py   Spec, TrainConfig")
    owned = " ".join(m.group(1) for m in re.finditer(r"ood_core/\S*[ ]{2,}(.*)$", architecture, re.M))
    calls |= set(re.findall(r"\b(\w+)\(\)", owned))
    names |= set(re.findall(r"\b([A-Z]\w*)\b(?!\()", owned))
    assert {"register_dataset", "register_model", "build_benchmark"} <= calls and "MODELS" in names
    source = _python_sources()
    undefined = [n for n in sorted(calls) if not re.search(rf"^\s*(?:async )?(?:def|class) {n}\b", source, re.M)]
    undefined += [n for n in sorted(names)
                  if not re.search(rf"^\s*(?:class {n}\b|def {n}\b|{n}\s*(?::[^=\n]*)?=)", source, re.M)]
    assert not undefined, f"CONTRIBUTING.md names functions or classes that do not exist: {undefined}"


def test_pages_show_the_full_references_with_linked_titles():
    from pages import _support as ui

    assert ui.reference_line("msp") == "Reference: " + REGISTRY["msp"].reference.markdown()
    gmm = REGISTRY["gmm"].references()
    assert len(gmm) == 2 and ui.reference_line("gmm") == "References: " + "; ".join(r.markdown() for r in gmm)
