"""Methods page: a card per detector, organised by the survey's taxonomy, with a jump to its scores."""
from __future__ import annotations

import re

import streamlit as st

from ood_core import estimates, settings
from ood_core.detectors import FAMILIES, REGISTRY, Param
from ood_core.models.registry import MODELS
from ood_core.spec import ONE_CLASS_SETTINGS, REGIME_TITLES, SETTING_TITLES
from pages import _support as ui

SCORES_PAGE = "pages/scores.py"
SCORES_DETECTOR_KEY = "scores-detector"  # the Scores page's detector selectbox
# a LaTeX formula longer than this (characters of source) is drawn across the card, not in its left column, where
# the one-class score's ten cases were cut off at the right
WIDE_LATEX = 400

NEEDS_WORDS = {
    "logits": "logits",
    "features": "penultimate features",
    "model": "the model (weights)",
    "feature_maps": "intermediate feature maps",
    "model_score": "the one-class model's own score",
}


def model_words(name: str) -> str:
    """The one-class models behind the one-class model's own score (their titles and descriptions, as its cost line
    lists them), so that a search for one ('Lite0', 'EfficientNet', 'hypersphere') finds that card; '' for the rest."""
    if "model_score" not in REGISTRY[name].needs:
        return ""
    return " ".join(f"{m.title} {m.short} {m.description}" for m in MODELS.values()
                    if m.kind == "one_class" and m.own_score)


def matches(name: str, query: str) -> bool:
    """Whether a detector's card holds every word of the query (case-insensitive): in its name, title or family, or
    at the start of a word of its formula, idea or references, or of the one-class models behind it, so that a
    method that is a model behind a shared score (CSI, U-std, OC-GAN behind the one-class model's own score) or an
    author's name finds its card."""
    cls = REGISTRY[name]
    label = f"{name} {cls.title} {ui.family_label(cls.family)}".lower()  # anywhere in a word: "maha", "logit"
    refs = " ".join(f"{r.authors} {r.title} {r.venue} {r.year}" for r in cls.references())
    # from a word's start: "Tack" is not in "Attacks"
    body = f"{cls.formula} {cls.intuition} {refs} {model_words(name)}".lower()
    return all(w in label or re.search(r"(?<!\w)" + re.escape(w), body) for w in query.lower().split())


def matching_regimes(query: str) -> list[str]:
    """The training regimes whose name or title holds every word of the query (case-insensitive)."""
    return [r for r, title in REGIME_TITLES.items()
            if all(w in f"{r} {title}".lower() for w in query.lower().split())]


def applies_now(name: str) -> bool:
    """Whether the detector can score the current experiment (its setting, model and training regime)."""
    spec = ui.current_spec()
    # class-relative methods need at least two ID classes: OSR has K known, ND/AD one normal class, and a
    # classifier in the OOD setting has at least two by definition
    n = spec.known_classes if spec.setting == "osr" else 1 if spec.setting in ONE_CLASS_SETTINGS else 2
    return settings.is_applicable(name, spec.setting, spec.model, n, spec.training.regime)


def param_line(pname: str, p: Param) -> str:
    if p.kind == "choice":
        rng = "one of " + ", ".join(f"`{c}`" for c in p.choices)
    elif p.low is None or p.high is None:
        rng = "unbounded"
    else:
        rng = f"{p.low:g} – {p.high:g}" + (", log scale" if p.scale == "log" else "")
    sweep = f" · sweep {', '.join(map(str, p.sweep))}" if p.sweep else ""
    helptext = f" — {p.help}" if p.help else ""
    return f"- `{pname}` = **{p.default}** · {rng}{sweep}{helptext}"


def card(name: str) -> None:
    """One detector: the formula and the idea on the left, parameters, needs, cost and the jump on the right."""
    cls = REGISTRY[name]
    wide = len(cls.latex) > WIDE_LATEX  # a formula of many cases: the card's whole width, above the columns
    with st.container(border=True):
        if wide:
            st.markdown(f"#### {cls.title or name}  \n`{name}` · {ui.family_label(cls.family)}")
            st.latex(cls.latex)
        left, right = st.columns([2, 1], gap="medium")
        with left:
            if not wide:
                st.markdown(f"#### {cls.title or name}  \n`{name}` · {ui.family_label(cls.family)}")
                if cls.latex:
                    st.latex(cls.latex)
                elif cls.formula:
                    st.code(cls.formula, language=None)
            if cls.intuition:
                st.markdown(cls.intuition)
            if cls.references():
                st.caption(ui.reference_line(name))
        with right:
            if cls.params:
                st.markdown("**Parameters** (default · range · sweep)\n" + "\n".join(param_line(k, p)
                                                                                   for k, p in cls.params.items()))
            else:
                st.markdown("**Parameters:** none.")
            needs = ", ".join(NEEDS_WORDS.get(n, n) for n in cls.needs)
            st.markdown(f"**Needs:** {needs}  \n**Cost:** {estimates.cost_words(name)}")
            ok = applies_now(name)
            spec = ui.current_spec()
            regime = (f", training regime {spec.training.regime}; it needs {' or '.join(cls.regimes)}"
                      if cls.regimes else "")
            why = None if ok else (f"{cls.title} does not apply to the current experiment "
                                   f"({SETTING_TITLES.get(spec.setting, spec.setting)}, model {spec.model}{regime}).")
            if st.button("See its scores →", key=f"methods-jump-{name}", disabled=not ok, help=why):
                st.session_state[SCORES_DETECTOR_KEY] = name
                st.switch_page(SCORES_PAGE)


def main() -> None:
    st.title("Methods: the detectors, by the survey's taxonomy")
    ui.tutorial("Every detector turns a sample into one **unfamiliarity score** — higher means more likely "
                "out-of-distribution, unknown, novel or anomalous. They are grouped as in Salehi et al. (2022): "
                "post-hoc functions of the classifier's outputs, input perturbations, activation shaping, "
                "distances and densities in feature space, open-set recalibration, uncertainty and one-class "
                "models. Each card gives the decision score, the idea, the parameters and a button to its scores.")
    query = st.text_input("Search", st.query_params.get("q", ""), key="methods-search",
                          placeholder="name, title, method or author, e.g. energy, knn, ReAct, CSI",
                          help="Filters the cards by name, title, family, formula, idea or reference (an author, "
                               "a paper's title, a method behind a shared score such as CSI).")
    if query:
        ui.remember_in_url("q", query)
    else:
        ui.forget_in_url("q")
    names = [n for n in REGISTRY if matches(n, query)]
    regimes = matching_regimes(query) if query else []
    if regimes:  # outlier exposure, LogitNorm, ARPL...: ways to train the classifier, which any detector then scores
        st.info(("Training regimes" if len(regimes) > 1 else "A training regime") + f" matching “{query}”: "
                + "; ".join(f"**{REGIME_TITLES[r]}** (`{r}`)" for r in regimes)
                + ". A regime is a way to train the classifier, not a detector: choose it on the Experiment page "
                  "(Training regime, in the out-of-distribution and open-set settings); the detectors then "
                  "score the model it trains.")
    if not names:
        st.info(f"No detector matches “{query}”.")
        return
    present = [f for f in FAMILIES if any(REGISTRY[n].family == f for n in names)]
    st.markdown(f"{len(names)} of {len(REGISTRY)} detectors · jump to: " + " · ".join(
        f"[{ui.family_label(f)}](#family-{f.replace('_', '-')})" for f in present))
    for family, description in FAMILIES.items():
        members = [n for n in names if REGISTRY[n].family == family]
        if not members:
            continue
        st.subheader(f"{ui.family_label(family)} ({len(members)})", anchor=f"family-{family.replace('_', '-')}")
        st.caption(description)
        for name in members:
            card(name)


main()
