"""UI support for the OOD Explorer pages: the one module that holds Streamlit caching glue.

It owns "the current experiment" (a Spec in st.session_state whose model is trained with a visible
progress bar when no checkpoint is on disk), the cached detector scores and every page's own caches
(Compare's rows and runs, Sensitivity's sweeps, the activation view, the embedding reducers and UMAP
warm-up, attribution maps), an uploaded user model, the shared sidebar, and widgets built from detector `Param`s. Numbers come from ood_core; nothing
here computes a metric or a score itself.

It also keeps a view in its URL (each page's choices read from and written back to st.query_params), presentation
mode (present=1: larger text, no explanations, the main chart first) and the teaching presets (ood_core.presets:
the sidebar's buttons, a preset's link, the lesson's banner).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
import time
from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from ood_core import (Spec, activation_stats, compare, embedding, explain, figures, metrics, pipeline, report, serving,
                      settings)
from ood_core import costs, estimates, jobs
from ood_core.data import DATASETS, Benchmark, build_benchmark
from ood_core.data.registry import OOD_SETS
from ood_core.device import describe_device
from ood_core.detectors import FAMILIES, REGISTRY, Param
from ood_core.inference import ModelAdapter
from ood_core.models import DEFAULT_CACHE_DIR, ModelLoadError, cache_status, is_cached, load_user_model
from ood_core.models import loading
from ood_core.models.registry import model_title
from ood_core.pipeline import Experiment
from ood_core.presets import PRESETS
from ood_core.report import METRIC_COLUMNS, OSCR_COLUMN
from ood_core.spec import CLASSIFIER_SETTINGS, QUERY_FIELDS, SETTING_TITLES, TrainConfig
from ood_core.text import brief, provenance_line

SPEC_KEY = "spec"  # session_state: the current Spec
USER_MODEL_KEY = "user_model"  # session_state: {"name", "digest", "data", "spec_key"} of an uploaded model
INFO_KEY = "experiment_info"  # session_state: what the sidebar shows about the prepared experiment

# training estimates corrected by what trainings took on this machine (ood_core/timings.py), unless
# OOD_EXPLORER_RATES_ONLY=1
if not serving.rates_only():
    estimates.use_training_times(DEFAULT_CACHE_DIR)

# one lock per spec key, so two sessions never train the same model at the same time
_TRAIN_LOCKS: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def _leave_pages_directory_mode() -> None:
    """Make app.py's st.navigation route every URL, even on a fresh server's first visit.

    Streamlit treats a `pages/` folder beside the main script as the old (v1) multipage layout until
    some session has called st.navigation; until then a first visit straight to /scores runs that page
    without app.py (no wide layout, no shared sidebar, the folder's files listed as pages). The first
    import of this module happens inside that run: switch v1 off and rerun, so app.py takes over.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # a Streamlit without the v1 fallback: nothing to do
        return
    if getattr(PagesManager, "uses_pages_directory", False) and get_script_run_ctx() is not None:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_pages_directory_mode()


# --- the current spec ---------------------------------------------------------------------------

def current_spec() -> Spec:
    """The Spec this session works on: on a session's first run the one its link describes (the URL's query
    parameters), else the default experiment, until the user picks another."""
    if SPEC_KEY not in st.session_state:
        spec = Spec()
        if any(k in st.query_params for k in QUERY_FIELDS):
            try:
                spec = Spec.from_query(st.query_params.to_dict())
            except (TypeError, ValueError) as e:
                st.warning(f"This link's experiment could not be used ({brief(str(e))}); showing the default one.")
        st.session_state[SPEC_KEY] = spec
    return st.session_state[SPEC_KEY]


def sync_query_params(spec: Spec) -> None:
    """Write the spec into the URL (its own keys only; a page's other parameters stay), so that a reload or a copied
    link opens the same experiment, and presentation mode (present=1) while it is on."""
    want = spec.to_query()
    for key in QUERY_FIELDS:
        if key in want:
            if st.query_params.get(key) != want[key]:
                st.query_params[key] = want[key]
        elif key in st.query_params:
            del st.query_params[key]
    if presenting():
        remember_in_url(PRESENT_KEY, "1")
    else:
        forget_in_url(PRESENT_KEY)


def view_link() -> str:
    """The address of this view (page and query parameters), from the browser's URL as Streamlit reports it."""
    from urllib.parse import urlencode, urlsplit, urlunsplit

    try:
        base = urlsplit(st.context.url or "")
    except Exception:  # outside a browser session (AppTest): a relative link
        base = urlsplit("")
    return urlunsplit((base.scheme, base.netloc, base.path, urlencode(st.query_params.to_dict()), ""))


def set_spec(spec: Spec) -> None:
    """Make `spec` current; an uploaded model made for another spec stops being used."""
    st.session_state[SPEC_KEY] = spec
    user = st.session_state.get(USER_MODEL_KEY)
    if user and user["spec_key"] != spec.key():
        del st.session_state[USER_MODEL_KEY]


def make_spec(base: Spec, dataset: str, seed: int, epochs: int, lr: float, batch_size: int, **setting: Any) -> Spec:
    """A new Spec from form values; raises ValueError with the library's message on a bad value.

    `setting` may carry setting, model, regime, known_classes, normal_class, contamination.
    """
    serving.check_training_allowed(epochs, batch_size)  # shared (classroom) mode: bounded trainings
    regime = setting.pop("regime", base.training.regime)
    training = dataclasses.replace(base.training, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
                                   regime=regime)
    return dataclasses.replace(base, dataset=dataset, seed=int(seed), training=training, **setting)


def spec_json(spec: Spec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def _spec_from_json(blob: str) -> Spec:
    return Spec.from_dict(json.loads(blob))


# --- cached resources (keyed by strings, never by a model or a tensor) ---------------------------

@st.cache_resource(show_spinner=False, max_entries=8)
def _experiment_store(spec_key: str, spec_blob: str, _exp: Optional[Experiment] = None) -> Experiment:
    """The prepared Experiment of one spec, shared by all sessions: `_exp` when just trained, else loaded.

    Training never runs in here: elements drawn from inside a cached function cannot target
    containers made outside it; trainings are jobs (`_trained_experiment`).
    """
    return _exp if _exp is not None else pipeline.prepare(_spec_from_json(spec_blob))


def _user_experiment(spec: Spec, user: dict) -> Optional[Experiment]:
    """The Experiment of an uploaded model: its forward pass over every split runs as a job (estimate, progress
    bar, Cancel), kept by the file's SHA-256 and how it is read; None until it lands (its panel is drawn)."""
    key, blob = spec.key(), spec_json(spec)
    arch, norm = user.get("arch", OWN_ARCH), user.get("norm", "dataset")
    bench = _benchmark(key, blob)
    if user.get("pretrained"):  # torchvision's weights, in its cache since the user asked for them
        arch, norm = user["pretrained"], "weights"
    n = sum(len(s) for s in bench.splits().values())
    per_image = user.get("forward_s")  # timed when the model was loaded (timed_forward)
    if per_image:
        est = jobs.Estimate(per_image * n, f"runs your model once on {n:,} images (every split; "
                                           f"{per_image * 1e3:.2g} ms per image, timed when it was loaded)")
    else:
        est = jobs.Estimate(estimates.UNSEEN_MODEL_FORWARD_S * n * estimates.size_factor(spec.image_size),
                            f"runs your model once on {n:,} images (every split)")

    def work(progress, cancel) -> Experiment:
        if user.get("pretrained"):
            model, _ = loading.load_model(user["pretrained"], bench=bench)
        else:
            model, _ = load_uploaded_model(user["data"], spec, arch, norm)
        return pipeline.prepare(spec, model=model, bench=bench, cancel=cancel, on_forward=progress)

    _, exp = run_job(job_key("user-model", key, user["digest"], arch, norm), f"Running your model {user['name']}",
                     work, est, start_label="Run it", auto_start=True)
    return exp


@st.cache_resource(show_spinner=False, max_entries=8)
def _benchmark(spec_key: str, spec_blob: str) -> Benchmark:
    return build_benchmark(_spec_from_json(spec_blob))


@st.cache_data(show_spinner=False, max_entries=256)
def _scores(exp_id: str, name: str, params_blob: str, _exp: Experiment) -> dict[str, np.ndarray]:
    """Scores of ID test and every OOD set for one (experiment, detector, params); fitted on ID data only."""
    det = _exp.fit_detector(name, json.loads(params_blob))
    return _exp.score(det)


def experiment_id(exp: Experiment) -> str:
    """Spec key plus a fingerprint of the model's test outputs: tells a retrained or uploaded model apart."""
    test = exp.outputs["test"]
    h = hashlib.sha1(np.ascontiguousarray(test.logits).tobytes())
    h.update(np.ascontiguousarray(test.features).tobytes())
    h.update(",".join(exp.ood_names).encode())  # an experiment with the user's own OOD sets added is another one
    fp = h.hexdigest()[:12]
    return f"{exp.spec.key()}-{fp}"


# --- getting the current experiment ---------------------------------------------------------------

def get_experiment(retrain: bool = False, requested: bool = False) -> Optional[Experiment]:
    """The current experiment: loaded when its model is cached, else trained as a background job.

    The training job draws its panel (estimate, progress bar with the live curve, Cancel) and this returns None
    until it lands; the rest of the page stays usable meanwhile, and the page reruns when the job is done.
    `requested`: the user asked for this experiment just now (the Experiment page's form), so its training starts at
    once; a view opened by link or navigation starts a training on its own only when it is quick
    (estimates.is_slow), else it shows the estimate and a start button first. `retrain`: train again even when
    cached (a new job each time it is asked).
    Returns None (after showing an st.error) when the library refuses the spec or the model.
    """
    spec = current_spec()
    key, blob = spec.key(), spec_json(spec)
    user = active_user_model(spec)
    writable, why = _cache_status()
    if not writable:  # the one warning about it; get_model keeps models in memory meanwhile
        st.warning(f"The model cache {DEFAULT_CACHE_DIR} is not writable ({why}): models are kept in memory "
                   "for this server only.")
    t0 = time.perf_counter()
    try:
        if user is not None:
            exp = _user_experiment(spec, user)
            if exp is None:
                return None
            source = f"your upload {user['name']}"
        else:
            exp = _trained_experiment(spec, retrain, requested)
            if exp is None:
                return None
            source = ("trained just now" if _landed_now(spec) else
                      "on-disk cache" if exp.training.from_cache else "trained earlier on this server")
    except Exception as e:  # the library's messages are written for users; show them, not a traceback
        text = str(e) if isinstance(e, ModelLoadError) else brief(str(e))  # the loader's messages are whole
        st.error(f"Could not prepare the experiment: {text}")
        st.session_state.pop(INFO_KEY, None)
        return None
    extra = user_ood_sets()
    if extra:
        try:
            exp = _with_user_ood(experiment_id(exp), tuple(extra), exp)
        except Exception as e:  # a set that cannot be built at this size: say so, keep the experiment without it
            st.error(f"Your OOD sets could not be added to this experiment: {brief(str(e))}")
    note = exp.training.note
    shown = st.session_state.setdefault("cache_notes_shown", set())
    if note and writable and (key, note) not in shown:  # once per session; unwritable: said above already
        shown.add((key, note))
        st.warning(note)
    from_cache = source in ("on-disk cache", "trained earlier on this server")
    seconds = float(exp.training.seconds or 0.0) if source == "trained just now" else time.perf_counter() - t0
    st.session_state[INFO_KEY] = {"spec_key": key, "accuracy": id_accuracy(exp), "source": source,
                                  "from_cache": from_cache, "seconds": seconds,
                                  "provenance": None if user is not None else dict(exp.training.provenance or {})}
    return exp


# session_state: {spec key: (job key, shared)} of the trainings this session started or waits for (shared: the one
# job of a spec every session uses; else a retraining of this session's own)
TRAINING_JOBS_KEY = "training_jobs"
LANDED_KEY = "training_landed"  # session_state: the spec keys whose training landed in this run
# live training curves of running training jobs, by job key (the job panel draws them)
_LIVE_CURVES: dict[str, list[dict]] = {}


def _landed_now(spec: Spec) -> bool:
    return spec.key() in st.session_state.get(LANDED_KEY, ())


def training_estimate(spec: Spec) -> jobs.Estimate:
    """What training the spec's model costs (reference rates times its benchmark's training images)."""
    return estimates.training(spec, len(_benchmark(spec.key(), spec_json(spec)).train))


def suggested_per_class(setting: str, dataset: str, size: int, epochs: int) -> int:
    """The per-class training cap the Experiment form starts from for a classifier on `dataset` (0 = every image):
    the largest that keeps the estimated training near SUGGESTED_TRAINING_S on this CPU (one-class models: 0)."""
    if setting not in CLASSIFIER_SETTINGS:
        return 0
    try:
        spec = Spec(setting=setting, dataset=dataset, image_size=size, training=TrainConfig(epochs=int(epochs)))
        bench = _benchmark(spec.key(), spec_json(spec))
    except ValueError:  # the dataset's files are absent (DataError) or it cannot serve this setting: the page says so
        return 0
    return estimates.suggested_per_class(spec, np.bincount(bench.train.y))


def _trained_experiment(spec: Spec, retrain: bool = False, requested: bool = False) -> Optional[Experiment]:
    """The spec's experiment from the cache, or from its training job once that has landed (None meanwhile, after
    drawing the job's estimate and start button or its panel)."""
    key, blob = spec.key(), spec_json(spec)
    landed = st.session_state.setdefault(LANDED_KEY, set())
    landed.discard(key)
    pending = st.session_state.setdefault(TRAINING_JOBS_KEY, {})
    if retrain:  # a job of its own each time it is asked
        pending[key] = (job_key("train", key, time.time_ns()), False)
        requested = True
    elif key not in pending:
        if is_cached(spec):
            with st.spinner("Loading the cached model and running it on every split…"):
                return _experiment_store(key, blob)
        pending[key] = (job_key("train", key), True)
    jkey, shared = pending[key]
    if shared and jobs.runner().get(jkey) is None and is_cached(spec):
        pending.pop(key)  # another session's training of this spec landed and was collected: the model is on disk
        with st.spinner("Loading the model just trained…"):
            return _experiment_store(key, blob)
    est = training_estimate(spec)
    data = DATASETS[spec.dataset].title if spec.dataset in DATASETS else spec.dataset
    title = f"Training the model of this experiment ({data}, {model_title(spec.model, short=True)}, seed {spec.seed})"
    # asked for: start now; opened by a link or a page: start at once only when quick, else estimate + button first
    job, exp = run_job(jkey, title, _training_work(spec, retrain, jkey), est, start_label="Train the model",
                       auto_start=requested or est.seconds <= estimates.SLOW_S, button_key=f"train-start-{key}")
    if exp is None:
        if job is not None and job.state in (jobs.FAILED, jobs.CANCELLED) and is_cached(spec):
            pending.pop(key)  # a retraining that did not finish: the cached model stays, and is shown
            return _experiment_store(key, blob)
        return None
    pending.pop(key)
    _LIVE_CURVES.pop(jkey, None)
    _experiment_store.clear(key, blob)
    _experiment_store(key, blob, _exp=exp)
    if is_cached(spec):  # on disk now: the cached resource and the disk keep it, the job need not
        jobs.runner().forget(jkey)
    landed.add(key)
    return exp


def _training_work(spec: Spec, retrain: bool, jkey: str):
    """The training job's work `fn(progress, cancel)`: prepare the spec's experiment, training its model (or loading
    it when another session's training of the same spec finished first). No Streamlit inside: it runs in a thread."""
    def work(progress, cancel) -> Experiment:
        history = _LIVE_CURVES.setdefault(jkey, [])

        def on_epoch(p) -> None:
            history.append(dict(p.__dict__))
            acc = f" · validation accuracy {p.val_accuracy:.1%}" if np.isfinite(p.val_accuracy) else ""
            done = " · running the model on every split…" if p.epoch == p.epochs else ""
            progress(0.95 * p.epoch / p.epochs, f"epoch {p.epoch}/{p.epochs} · loss {p.loss:.3f}{acc}{done}")

        def on_wait(place: int) -> None:  # the training queue is full: say where this training stands
            progress(0.0, f"waiting for a free training slot: number {place} in line "
                          f"({serving.training_slots()} trainings run at once on this server)…")

        progress(0.0, "preparing the data…")
        lock = training_lock(spec)
        if lock.locked():
            progress(0.0, "another session is training this model right now; waiting for it…")
        with lock:
            jobs.check_cancelled(cancel)
            if not retrain and is_cached(spec):  # another session trained it while we waited
                return pipeline.prepare(spec, cancel=cancel)
            return pipeline.prepare(spec, progress=on_epoch, retrain=retrain, on_wait=on_wait, cancel=cancel,
                                    on_forward=lambda f, m: progress(0.95 + 0.05 * f, m))
    return work


USER_OOD_KEY = "user_ood_sets"  # session_state: the names of the OOD sets this session uploaded, in order


def user_ood_sets() -> list[str]:
    """The OOD sets this session uploaded that are still registered (the server may have restarted)."""
    return [n for n in st.session_state.get(USER_OOD_KEY, []) if n in OOD_SETS]


@st.cache_resource(show_spinner="Running the model on your OOD images…", max_entries=8)
def _with_user_ood(exp_id: str, names: tuple, _exp: Experiment) -> Experiment:
    """The experiment with the session's uploaded OOD sets added (a copy: the shared one is not changed)."""
    return _exp.with_ood_sets(names)


@st.cache_data(show_spinner=False, ttl=30)
def _cache_status() -> tuple[bool, str]:
    """ood_core's cache_status of the default cache, probed at most every 30 s (it writes and fsyncs a file)."""
    return cache_status(DEFAULT_CACHE_DIR)


def id_accuracy(exp: Experiment) -> Optional[float]:
    """Closed-set accuracy on ID test, or None for models without a classifier head (one-class settings)."""
    try:
        return exp.id_accuracy
    except Exception:
        return None


def last_preparation() -> dict:
    """What the last get_experiment() did: source ("trained just now", "on-disk cache", ...) and seconds."""
    return dict(st.session_state.get(INFO_KEY) or {})


def training_lock(spec: Spec) -> threading.Lock:
    """The lock every page holds while it trains (or waits for) the model of `spec`: one training per model."""
    return _TRAIN_LOCKS[spec.key()]


# --- the pages' own caches (string-keyed; `_exp` is never hashed) ----------------------------------

@st.cache_data(show_spinner=False, max_entries=512)
def scores_table(exp_id: str, name: str, params_blob: str, sets: tuple, _exp: Experiment,
                 _given: Optional[dict] = None) -> pd.DataFrame:
    """Scores: the metrics table of one (experiment, detector, params, OOD sets), shared by every session (a
    threshold or a toggle reruns the page without recomputing it). `_given`: the scores when the page has them
    (a job's result), so they are never computed again here."""
    scores = _given if _given is not None else _scores(exp_id, name, params_blob, _exp)
    id_correct = _exp.id_correct if _exp.spec.setting == "osr" else None
    return report.metrics_frame(scores["test"], {s: scores[s] for s in sets}, id_correct)


@st.cache_resource(show_spinner=False, max_entries=256)
def scores_curves(exp_id: str, name: str, params_blob: str, sets: tuple, _exp: Experiment,
                  _given: Optional[dict] = None):
    """Scores: (ROC figure, PR figure) of one (experiment, detector, params, OOD sets); pages must not mutate them."""
    scores = _given if _given is not None else _scores(exp_id, name, params_blob, _exp)
    ood = {s: scores[s] for s in sets}
    return figures.roc_figure(scores["test"], ood), figures.pr_figure(scores["test"], ood)


@st.cache_data(show_spinner=False, max_entries=1024)
def detector_rows(exp_id: str, name: str, params_blob: str, _exp: Experiment) -> list[dict]:
    """Compare: result rows (CLI layout) of one detector on every OOD set of one experiment; errors become rows."""
    params = json.loads(params_blob)
    rows, _ = pipeline.evaluate(_exp, [name], {name: params} if params else None)
    return rows


@st.cache_resource(show_spinner=False)
def results_store() -> dict:
    """Compare: finished multi-seed and protocol runs, keyed by strings and shared by all sessions."""
    return {}


def remember(key: str, value: dict, limit: int = 32) -> None:
    """Keep a finished run in results_store(), forgetting the oldest beyond `limit`."""
    store = results_store()
    store[key] = value
    while len(store) > limit:
        store.pop(next(iter(store)))


@st.cache_data(show_spinner=False, max_entries=256)
def sensitivity_sweep(exp_id: str, detector: str, param: str, values_blob: str, sets_blob: str, fixed_blob: str,
                      _exp: Experiment) -> list[dict]:
    """Sensitivity: compare.sweep of one parameter, keyed by strings (the values, sets and the other params)."""
    return compare.sweep(_exp, detector, param, json.loads(values_blob), json.loads(sets_blob), json.loads(fixed_blob))


@st.cache_resource(show_spinner=False, max_entries=16)
def activation_view(exp_id: str, sets: tuple, _exp: Experiment):
    """Activations: what does not depend on the percentile, once per (experiment, OOD sets)."""
    return activation_stats.activation_view_from_experiment(_exp, list(sets), seed=_exp.spec.seed)


UMAP_WARMUP_DELAY_S = 5.0  # let the browser draw the first page before the warm-up takes a core


class _UmapWarmup:
    """A background thread that loads (or compiles) UMAP's numba kernels; `join()` makes it start at once and waits."""

    def __init__(self, delay: float) -> None:
        self._now = threading.Event()
        self._delay = delay
        self.thread = threading.Thread(target=self._run, name="umap-warmup", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self._now.wait(self._delay)
        try:
            embedding.warm_umap()
        except Exception:  # only an optimisation: a real fit reports its own errors
            pass

    def join(self) -> None:
        self._now.set()
        self.thread.join()


@st.cache_resource(show_spinner=False)
def umap_warmup() -> _UmapWarmup:
    """Once per server process: warm UMAP up in the background, so the first map is quick."""
    return _UmapWarmup(UMAP_WARMUP_DELAY_S)


@st.cache_resource(show_spinner=False, max_entries=16)
def embedding_reducer(exp_id: str, space: str, method: str, seed: int, sets: tuple, max_per_set: Optional[int],
                      _exp: Experiment):
    """Embeddings: (frame of the fitting points, reducer) fitted on ID test + `sets`, subsampled to max_per_set."""
    frame, X = embedding.embedding_frame(_exp, list(sets), space, max_per_set, seed)
    return frame, embedding.fit_reducer(X, method, seed)


@st.cache_data(show_spinner=False, max_entries=256)
def attribution_maps(exp_id: str, method: str, split: str, indices: tuple, target: Optional[int],
                     _exp: Experiment) -> np.ndarray:
    """Explanations: heat maps (n, H, W) of stored images of one split, once per (experiment, method, images, target)."""
    return explain.attribute(_exp.model, method, _exp.outputs[split].inputs[list(indices)], target, bench=_exp.bench)


@st.cache_resource(show_spinner=False, max_entries=128)
def fitted_detector(exp_id: str, name: str, params_blob: str, _exp: Experiment):
    """Explanations: a detector fitted on the experiment's ID data, kept to score single new samples."""
    return _exp.fit_detector(name, json.loads(params_blob))


# --- an uploaded model ------------------------------------------------------------------------------

OWN_ARCH = ""  # the upload's architecture when it is a state_dict of the experiment's own model
INPUT_NORMS = {"dataset": "the dataset's own (as the project's models)", "imagenet": "ImageNet mean and std",
               "pixels": "pixels in [0, 1]", "half": "pixels in [-1, 1] (mean 0.5, std 0.5)"}


def load_uploaded_model(data: bytes, spec: Spec, arch: str = OWN_ARCH, norm: str = "dataset"):
    """An uploaded model for the spec's data, checked: a state_dict of the spec's own model (arch OWN_ARCH), of a
    named architecture (the registry's or torchvision's), an exported program (.pt2) or a TorchScript file (found
    from the file). Returns (model, info or None); ValueError (ModelLoadError) with a clear message if bad."""
    if not data:
        raise ValueError("the uploaded file is empty")
    bench = _benchmark(spec.key(), spec_json(spec))
    kind = loading.detect_format(io.BytesIO(data))
    if kind == "state_dict" and arch in (OWN_ARCH, spec.model):
        return load_user_model(io.BytesIO(data), spec, bench), None
    return loading.load_model(io.BytesIO(data), bench=bench, arch=arch or None,
                              normalisation=None if norm == "dataset" else norm)


def timed_forward(model, spec: Spec) -> Optional[float]:
    """Seconds per image of a model just loaded, on the spec's ID test images and the device its run will use
    (estimates.time_forward on estimates.PROBE_IMAGES of them): what its first run over every split is estimated
    from. None when it cannot run here: that run says why, in a sentence."""
    bench = _benchmark(spec.key(), spec_json(spec))
    try:
        return estimates.time_forward(ModelAdapter(model, input_std=bench.std),
                                      bench.test.images[:estimates.PROBE_IMAGES])
    except (RuntimeError, ValueError):
        return None


def use_uploaded_model(name: str, data: bytes, arch: str = OWN_ARCH, norm: str = "dataset") -> Optional[str]:
    """Use an uploaded model for the current spec (see load_uploaded_model); an error message, or None on success."""
    spec = current_spec()
    digest = hashlib.sha256(data).hexdigest()
    current = st.session_state.get(USER_MODEL_KEY)
    if current and (current["digest"], current["spec_key"], current.get("arch"), current.get("norm")) == (
            digest, spec.key(), arch, norm):
        return None
    try:
        model, info = load_uploaded_model(data, spec, arch, norm)
    except ModelLoadError as e:  # complete sentences naming keys and sizes: shown whole, never cut
        return f"Could not use {name}: {e}"
    except ValueError as e:
        return f"Could not use {name}: {brief(str(e))}"
    st.session_state[USER_MODEL_KEY] = {"name": name, "digest": digest, "data": data, "spec_key": spec.key(),
                                        "arch": arch, "norm": norm, "info": info,
                                        "forward_s": timed_forward(model, spec)}
    return None


def use_pretrained(name: str, fetch: bool) -> Optional[str]:
    """Use torchvision's weights `name` (downloaded into torchvision's cache first when `fetch`: the user asked) on
    the current spec's data; an error message, or None on success."""
    spec = current_spec()
    try:
        model, info = loading.load_model(name, bench=_benchmark(spec.key(), spec_json(spec)), fetch=fetch)
    except ValueError as e:  # ModelLoadError: whole sentences (class count, not in the cache, ...)
        return f"Could not use {name}: {e}"
    st.session_state[USER_MODEL_KEY] = {"name": name, "digest": name, "data": b"", "spec_key": spec.key(),
                                        "arch": name, "norm": "weights", "info": info, "pretrained": name,
                                        "forward_s": timed_forward(model, spec)}
    return None


def active_user_model(spec: Optional[Spec] = None) -> Optional[dict]:
    """The uploaded model in use for `spec` (default: the current one), or None."""
    spec = spec or current_spec()
    user = st.session_state.get(USER_MODEL_KEY)
    return user if user and user["spec_key"] == spec.key() else None


def upload_widget_key() -> str:
    """The file_uploader's key; reset_upload() changes it, which empties the widget."""
    return f"upload-model-{st.session_state.get('upload_generation', 0)}"


def reset_upload() -> None:
    """Back to the trained model: forget the uploaded model and empty the upload widget."""
    st.session_state.pop(USER_MODEL_KEY, None)
    st.session_state["upload_generation"] = st.session_state.get("upload_generation", 0) + 1


def state_dict_bytes(exp: Experiment) -> bytes:
    """The experiment's model weights as a .pt state_dict (what the upload box accepts)."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in exp.model.state_dict().items()}, buf)
    return buf.getvalue()


# --- scores ------------------------------------------------------------------------------------------

def detector_scores(exp: Experiment, name: str, params: Mapping[str, Any]) -> tuple[Optional[dict], Optional[str]]:
    """(scores per split, None) or (None, error message): a failing detector never breaks the page. The result of
    a finished scoring job (`detector_scores_job`) is used when there is one, never computed again."""
    try:
        scores = jobs.runner().result(scores_job_key(exp, name, params))
        if scores is None:
            scores = _scores(experiment_id(exp), name, json.dumps(dict(params), sort_keys=True), exp)
    except Exception as e:
        return None, brief(f"{type(e).__name__}: {e}")
    return _checked(scores)


def _checked(scores: dict) -> tuple[Optional[dict], Optional[str]]:
    bad = [s for s, v in scores.items() if not np.all(np.isfinite(v))]
    if bad:
        return None, f"the detector gave NaN or infinite scores on {', '.join(bad)}"
    return scores, None


def scores_job_key(exp: Experiment, name: str, params: Mapping[str, Any]) -> str:
    """The job key of one detector's scores on every split of one experiment (shared by every session)."""
    return job_key("scores", experiment_id(exp), name, json.dumps(dict(params), sort_keys=True))


def detector_scores_job(exp: Experiment, name: str, params: Mapping[str, Any]) -> tuple[Optional[dict], Optional[str]]:
    """detector_scores for a detector that runs the network again (ODIN, Gram, MC dropout, the deep ensemble, ...),
    as a background job: (scores, None) once it has landed, (None, message) when it failed, and (None, None) while
    it is waiting to start, running or was cancelled; the job panel (progress, estimate, Cancel) is drawn meanwhile.
    Quick work starts at once; work estimated as slow (training networks, more than estimates.SLOW_S) waits for
    the user's click on a button that says how long it takes."""
    cls = REGISTRY[name]
    key = scores_job_key(exp, name, params)
    params = dict(params)
    try:
        serving.check_detector_allowed(name, params)  # shared mode: refused before any estimate or start button
    except ValueError as e:
        return None, brief(str(e))

    def work(progress, cancel):
        return exp.fit_and_score(name, params, progress=progress, cancel=cancel,
                                 fit_share=estimates.fit_share(exp, name, params))

    job, result = run_job(key, f"Scoring with {cls.title}", work, lambda: estimates.detector(exp, name, params),
                          start_label=f"Score with {cls.title}")
    if job is not None and job.state == jobs.FAILED:
        return None, brief(job.error)
    if result is None:
        return None, None
    return _checked(result)


def detector_scores_nowait(exp: Experiment, name: str, params: Mapping[str, Any],
                           start: bool = True) -> tuple[Optional[dict], Optional[str]]:
    """Any detector's scores without blocking the page: quick ones at once (detector_scores); the slow ones (they run
    or train a network) through their job (detector_scores_job: (None, None) until it lands) when `start`, else only
    the result of a job that has finished already."""
    if not REGISTRY[name].slow():
        return detector_scores(exp, name, params)
    if start:
        return detector_scores_job(exp, name, params)
    done = jobs.runner().result(scores_job_key(exp, name, params))
    return _checked(done) if done is not None else (None, None)


# --- long work as jobs (ood_core.jobs): an estimate first, then a progress bar and a Cancel button -------------
# The work runs in a background thread; the panel is a fragment that polls it every JOB_POLL_S seconds, so the
# rest of the page stays usable, and reruns the whole page when the job lands. Results are kept by key in the
# process's job runner, shared by every session: a finished job is never paid for twice.

JOB_POLL_S = 1.0


def job_key(*parts: Any) -> str:
    """A job's key from strings and JSON-able parts (the experiment id, the spec, the detector and its params)."""
    return json.dumps(parts, sort_keys=True, default=str)


def _job_id(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _minutes(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def run_job(key: str, title: str, work, estimate, start_label: str = "Start", auto_start: Optional[bool] = None,
            button_key: Optional[str] = None) -> tuple[Optional[jobs.Job], Any]:
    """The job `key` of the process's runner: (job, result) once done; else (job or None, None) after drawing
    where it stands. `work(progress, cancel)` is the job's function; `estimate` an Estimate or a function making
    one (called only when the job is not there yet).

    Not started yet: quick work (not estimates.is_slow) starts at once unless `auto_start` is False; other work
    shows its estimate and a start button (`button_key`). Running or queued: the job panel. Cancelled or failed:
    what happened, and a button to run it again (a cancelled job kept nothing)."""
    job = jobs.runner().get(key)
    if job is not None and job.state == jobs.DONE:
        return job, job.result
    if job is not None and job.active:
        job_panel(key)
        return job, None
    est = estimate() if callable(estimate) else estimate
    job_outcome(job, title)
    start = job is None and ((not estimates.is_slow(est)) if auto_start is None else auto_start)
    if not start:
        if job is None:
            st.info(f"**{title}** takes {est.words()}. It runs in the background with a progress bar and a Cancel "
                    "button; the rest of the page stays usable, and the result is kept once it lands.",
                    icon=":material/hourglass_top:")
        label = ("Run again" if job is not None else start_label) + f" ({jobs.duration_words(est.seconds)})"
        start = st.button(label, key=button_key or f"job-start-{_job_id(key)}", help=f"{est.words()}.",
                          type="secondary" if job is not None else "primary")
    if start:
        job = start_job(key, title, work, est)
    return job, None


def start_job(key: str, title: str, work, estimate: jobs.Estimate) -> jobs.Job:
    """Submit `work` as the job `key` (or find it there) and draw its panel."""
    job = jobs.runner().submit(key, work, estimate, title)
    job_panel(key)
    return job


def job_outcome(job: Optional[jobs.Job], title: str) -> None:
    """Say how a job that will not give a result ended: cancelled (nothing kept) or failed (its message)."""
    if job is None:
        return
    if job.state == jobs.CANCELLED:
        kept = " (whole networks it finished training stay cached)" if job.estimate.trains else ""
        st.info(f"{title}: cancelled after {_minutes(job.elapsed())}; nothing of it was kept{kept}.",
                icon=":material/cancel:")
    elif job.state == jobs.FAILED:
        st.error(f"{title} failed: {brief(job.error)}")


@st.fragment(run_every=JOB_POLL_S)
def job_panel(key: str) -> None:
    """Where a job stands: its estimate, a progress bar with what it does now, and a Cancel button. Redrawn every
    JOB_POLL_S seconds on its own; when the job lands, the whole page reruns and picks up the result."""
    job = jobs.runner().get(key)
    if job is None or job.finished:
        st.rerun()  # it landed (done, failed or cancelled): the page shows what came of it
    with st.container(border=True):
        st.markdown(f"**{job.title or 'Working'}** — estimated {job.estimate.words()}")
        bar = st.empty()
        # the button keeps its natural width beside the note (a narrow column would cut its label)
        row = st.container(horizontal=True, vertical_alignment="center")
        if row.button("Cancel", key=f"job-cancel-{_job_id(key)}", icon=":material/cancel:", disabled=job.cancelling,
                      help="Stops the work at its next step (an epoch's batch, an ensemble member, a split, a class); "
                           "nothing half-done is kept."):
            job.cancel()
        if job.state == jobs.QUEUED:
            text = (f"waiting for a free slot: number {job.place or 1} in line ({jobs.runner().slots} jobs run at once "
                    "on this server)…")
        elif job.cancelling:
            text = "cancelling… it stops at the next step"
        else:
            text = f"{job.message or 'starting…'} · {_minutes(job.elapsed())}"
        bar.progress(job.progress, text=text)
        curve = _LIVE_CURVES.get(key)
        if curve:  # a training: its loss and validation accuracy so far
            st.plotly_chart(figures.training_curve(list(curve)), key=f"job-curve-{_job_id(key)}")
        row.caption("This runs in the background: the rest of the page stays usable, and the result appears here "
                    "when it lands (then cached for everyone on this server).")


# detector scores in tables: one fixed format, so a narrow column never shows "%g"'s shortest form (".0006867")
SCORE_FORMAT = "%.4f"


def metric_column_config() -> dict:
    """Column formats with the metric definitions as header tooltips."""
    cfg = {label: st.column_config.NumberColumn(label, help=metrics.DEFINITIONS[k], format="%.1f %%")
           for k, label in {**METRIC_COLUMNS, "oscr": OSCR_COLUMN}.items()}
    cfg["_index"] = st.column_config.TextColumn("OOD set")
    return cfg


# --- detectors and their parameters -----------------------------------------------------------------

def family_label(family: str) -> str:
    return family.replace("_", " ").capitalize()


def reference_line(name: str) -> str:
    """A detector's references as one Markdown line, each title linked to its paper when there is a url."""
    refs = REGISTRY[name].references()
    if not refs:
        return ""
    return ("Reference: " if len(refs) == 1 else "References: ") + "; ".join(r.markdown() for r in refs)


def detector_options(exp: Experiment) -> list[str]:
    """The detectors that apply to the experiment's setting, model and training regime, in the survey's family
    order."""
    spec = exp.spec
    names = settings.detectors_for(spec.setting, spec.model, exp.bench.num_classes, net=exp.model,
                                   regime=spec.training.regime) or list(REGISTRY)
    order = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(names, key=lambda n: order.get(REGISTRY[n].family, len(order)))


SLOW_MARK = "⏳"
SLOW_HELP = (f"{SLOW_MARK} marks the slow methods, which run the network again (ODIN and Mahalanobis with input "
             "pre-processing, Gram matrices, MC dropout) or train networks first (the deep ensemble; OpenGAN and C2AE "
             "on the cached features). They run as a background job with an estimate, a progress bar and a Cancel "
             "button; the page stays usable meanwhile.")


def detector_label(name: str) -> str:
    """'Family · Title', with SLOW_MARK after the methods that run or train a network (from the registry)."""
    cls = REGISTRY[name]
    return f"{family_label(cls.family)} · {cls.title or name}" + (f" {SLOW_MARK}" if cls.slow() else "")


COST_HELP = ("The time after each name is what fitting and scoring that detector is expected to take on this "
             "experiment's data (ID training bank, scored images, feature size), from the measured curves of "
             "`scripts/bench_scaling.py` rescaled to this machine; the slow ones' from their measured rates.")


@st.cache_resource(show_spinner=False)
def _cost_factor() -> float:
    """costs.calibrate() once per server process (one small matrix product)."""
    return costs.calibrate()


def seconds_words(seconds: float) -> str:
    """An expected time, short: '<0.1 s', '~0.4 s', '~12 s', '~4 min'."""
    if seconds < 0.1:
        return "<0.1 s"
    if seconds < 10:
        return f"~{seconds:.1f} s"
    if seconds < 90:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 60:.0f} min"


def detector_cost(exp: Experiment, name: str) -> Optional[float]:
    """Expected seconds of fitting and scoring `name` on `exp` with its default parameters (None when unknown)."""
    if REGISTRY[name].slow():
        return estimates.detector(exp, name).seconds
    _cost_factor()
    n_bank = len(exp.outputs["train"])
    n_query = sum(len(exp.outputs[s]) for s in ("test", *exp.ood_names))
    return costs.expected_seconds(name, n_bank, n_query, exp.outputs["train"].features.shape[1])


@st.cache_data(show_spinner=False, max_entries=4096)
def _shown_cost(exp_id: str, name: str, _exp: Experiment) -> Optional[float]:
    """detector_cost, once per (experiment, detector): a picker's labels must not change between reruns (a widget
    whose option labels change loses its value), so the ensemble keeps its first estimate once its members train."""
    return detector_cost(_exp, name)


def detector_format(exp: Experiment):
    """A format_func for detector pickers: detector_label plus the expected time on this experiment's data."""
    exp_id = experiment_id(exp)

    def label(name: str) -> str:
        t = _shown_cost(exp_id, name, exp)
        return detector_label(name) + (f" · {seconds_words(t)}" if t is not None else "")
    return label


def param_widget(pname: str, p: Param, key: str, value: Any = None) -> Any:
    """A widget for one detector parameter, built from its Param, starting at `value` (default: the Param's);
    returns the chosen value."""
    label, help_ = pname, p.help or None
    start = p.default if value is None else value
    if p.kind == "choice":
        return st.selectbox(label, list(p.choices), index=list(p.choices).index(start), help=help_, key=key)
    if p.low is None or p.high is None:  # unbounded: a plain number box
        return st.number_input(label, value=start, help=help_, key=key)
    grid = p.slider_options()
    if grid is not None:  # log-spaced values (a log parameter, or a linear one from 0 spanning decades)
        fmt = (lambda v: f"{v:d}") if p.kind == "int" else (lambda v: f"{v:g}")
        start = start if start in grid else p.default  # a select slider only takes its own options
        return st.select_slider(label, options=grid, value=start, format_func=fmt, help=help_, key=key)
    if p.kind == "int":
        return st.slider(label, int(p.low), int(p.high), int(start), step=1, help=help_, key=key)
    step, decimals = p.slider_step()
    return st.slider(label, float(p.low), float(p.high), float(start), step=step, format=f"%.{decimals}f",
                     help=help_, key=key)


# --- a page's choices in the URL ---------------------------------------------------------------------------
# Each page reads its choices from the link (the widget's starting value) and writes them back as they change;
# query keys are per page ("sets" on Scores and on Compare are each that page's OOD sets): Streamlit drops a page's
# query parameters when another page is opened, and the shared sidebar writes the experiment back.

def _text(value: Any) -> str:
    """How a choice is written in the URL: lists comma-separated, booleans 1/0, floats in %g."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(_text, value))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def url_choice(key: str, options: Sequence, default: Any) -> Any:
    """The value a link gives for one of the page's choices (query parameter `key`) when it is one of `options`
    (matched by how remember_in_url writes it, so ints, None and booleans come back as themselves)."""
    raw = st.query_params.get(key)
    return next((o for o in options if _text(o) == raw), default) if raw is not None else default


def url_choices(key: str, options: Sequence, default: list) -> list:
    """Several values from a comma-separated query parameter (those among `options`, in the link's order)."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    by_text = {_text(o): o for o in options}
    chosen = [by_text[v] for v in raw.split(",") if v in by_text]
    return chosen if chosen or raw == "" else default


def slider_format(low: float, high: float) -> str:
    """The printf format of a slider over [low, high]: four significant digits, in exponent form when the values are
    large or tiny (Streamlit's slider prints "%.4g" of 5.883e7 as 58830000)."""
    big = max(abs(float(low)), abs(float(high)))
    return "%.3e" if big >= 1e5 or 0 < big < 1e-3 else "%.4g"


def url_number(key: str, low: float, high: float, default: float, kind: type = float) -> Any:
    """A number from the link (query parameter `key`) when it reads as `kind` and lies in [low, high]; else default."""
    raw = st.query_params.get(key)
    try:
        value = kind(raw) if raw is not None else None
    except (TypeError, ValueError):
        value = None
    return value if value is not None and np.isfinite(value) and low <= value <= high else default


def url_flag(key: str, default: bool) -> bool:
    """A yes/no choice from the link (1 or 0)."""
    raw = st.query_params.get(key)
    return raw == "1" if raw in ("0", "1") else default


def url_param(key: str, pname: str, p: Param) -> Any:
    """A detector parameter's value from the link (query parameter `key`), checked by its Param; None if absent/bad."""
    raw = st.query_params.get(key)
    if raw is None:
        return None
    try:
        if p.kind == "choice":  # choices may be strings, booleans or numbers: matched as remember_in_url writes them
            return next(c for c in p.choices if _text(c) == raw)
        return p.validate(pname, float(raw))
    except (StopIteration, TypeError, ValueError):
        return None


_UNSET = object()


def remember_in_url(key: str, value: Any, default: Any = _UNSET) -> None:
    """Write one of the page's choices into the URL (lists comma-separated), so a reload or a link restores it; a
    value equal to `default` (what the page shows without the parameter) is left out, which keeps links short."""
    if default is not _UNSET and _text(value) == _text(default):
        forget_in_url(key)
        return
    text = _text(value)
    if st.query_params.get(key) != text:
        st.query_params[key] = text


def forget_in_url(*keys: str) -> None:
    """Take choices out of the URL (they no longer apply: another detector's parameters, a stale threshold)."""
    for key in keys:
        if key in st.query_params:
            del st.query_params[key]


def forget_other_params(params: Mapping) -> None:
    """Drop the "p.<name>" query parameters that are not among `params` (another detector's)."""
    forget_in_url(*[k for k in st.query_params if k.startswith("p.") and k[2:] not in params])


# the pages' widget keys start with these: forgotten when a preset sets the URL, so the widgets start from it
PAGE_WIDGET_PREFIXES = ("scores-", "param-", "threshold-", "compare-", "sens-", "emb-", "act-", "expl-", "methods-")


def forget_page_widgets() -> None:
    """Drop every page widget's state, so that each starts again from the URL (a preset was just applied)."""
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(PAGE_WIDGET_PREFIXES)]:
        del st.session_state[key]


# --- presentation mode -----------------------------------------------------------------------------------

PRESENT_KEY = "present"  # session_state (the sidebar toggle's key) and the URL flag present=1
MAIN_CHART_HEIGHT = 430  # presentation mode: a page's main chart fits a 1024x768 screen under the title
PRESENT_FONT = 17  # presentation mode: plotly font size of the main charts
PRESENT_FONT_FAMILY = '"Source Sans", "Source Sans Pro", sans-serif'  # the app's own font
PRESENT_TEXT_COLOUR = "#31333F"  # the app's text colour

PRESENT_CSS = """
<style>
/* presentation mode: larger text, no captions, the page from the top of the screen and across its width */
[data-testid="stMainBlockContainer"] { padding: 4rem 1.5rem 2rem 1.5rem; }
[data-testid="stMain"] [data-testid="stMarkdownContainer"] p,
[data-testid="stMain"] [data-testid="stMarkdownContainer"] li { font-size: 1.25rem; }
[data-testid="stMain"] [data-testid="stWidgetLabel"] p { font-size: 1.1rem; }
[data-testid="stMain"] [data-testid="stHeading"] h1 { font-size: 1.8rem; padding: 0 0 0.25rem 0; }
[data-testid="stMain"] [data-testid="stCaptionContainer"] { display: none; }
</style>
"""


def init_presentation() -> bool:
    """On a session's first run presentation mode comes from the link (present=1); the sidebar toggle decides after."""
    if PRESENT_KEY not in st.session_state:
        st.session_state[PRESENT_KEY] = st.query_params.get(PRESENT_KEY) == "1"
    if st.session_state[PRESENT_KEY]:
        st.html(PRESENT_CSS)
    return st.session_state[PRESENT_KEY]


def presentation_toggle() -> None:
    """The sidebar switch for presentation mode (its state is PRESENT_KEY, set from the link on the first run)."""
    st.toggle("Presentation mode", key=PRESENT_KEY,
              help="For a projector: larger text, no explanatory text, each page's main chart first, sized for a "
                   "1024×768 screen. The address gets present=1, so a link opens in this mode.")


def presenting() -> bool:
    return bool(st.session_state.get(PRESENT_KEY, False))


def tutorial(text: str) -> None:
    """Explanatory text (a page's introduction, a method's theory): shown, except in presentation mode."""
    if not presenting():
        st.markdown(text)


def chart_first():
    """In presentation mode a container right here (under the page's title) for the page's main chart, so that it
    is drawn first though it is computed later; None otherwise (the page draws the chart where it belongs)."""
    return st.container() if presenting() else None


def main_chart(fig, where=None, height: int = MAIN_CHART_HEIGHT, font_size: int = PRESENT_FONT, **kwargs):
    """Draw a page's main chart (in `where`, default here). In presentation mode it gets larger fonts and a height
    that fits a 1024x768 screen; it is then drawn without Streamlit's chart theme, which would set its own (small)
    font sizes over the figure's, on a plain white template in the app's font instead."""
    where = st if where is None else where
    if not presenting():
        return where.plotly_chart(fig, **kwargs)
    fig.update_layout(template="plotly_white", height=height, font=dict(size=font_size, family=PRESENT_FONT_FAMILY,
                                                                         color=PRESENT_TEXT_COLOUR),
                      title_font_size=font_size + 3, legend_font_size=font_size - 1)
    return where.plotly_chart(fig, theme=None, **kwargs)


# --- teaching presets -------------------------------------------------------------------------------------

PRESET_KEY = "preset"  # session_state: the preset being shown; URL: preset=<name> (on its page)
LINK_READ_KEY = "link-read"  # session_state: this session's link has been read (on its first run)


def page_file(url_path: str) -> str:
    """The page script of a URL path ("" is the default page, Experiment)."""
    return f"pages/{url_path or 'experiment'}.py"


def _preset_query(name: str, choices: Optional[Mapping] = None) -> dict[str, str]:
    """The URL of a preset's view: its experiment, its page's choices (`choices` of a link win over the preset's
    own, so a changed view restores as changed), the preset's name and presentation mode."""
    p = PRESETS[name]
    query = {k: v for k, v in {**p.choices, **dict(choices or {})}.items() if k not in QUERY_FIELDS}
    query.update(p.spec.to_query(), preset=name)
    if presenting():
        query[PRESENT_KEY] = "1"
    return query


def apply_preset(name: str) -> None:
    """Open a preset: its experiment (trained if not cached), its page, that page's choices (widgets restart)."""
    p = PRESETS[name]
    set_spec(p.spec)
    forget_page_widgets()
    st.session_state[PRESET_KEY] = name
    st.switch_page(page_file(p.page), query_params=_preset_query(name))


def read_link(page) -> None:
    """On a session's first run: a link naming a preset (?preset=<name>) opens that preset's experiment on its page,
    with the link's own page choices where it has them (other links are read by current_spec and the pages)."""
    if st.session_state.get(LINK_READ_KEY):
        return
    st.session_state[LINK_READ_KEY] = True
    name = st.query_params.get(PRESET_KEY)
    if name not in PRESETS:
        return
    p = PRESETS[name]
    st.session_state[SPEC_KEY] = p.spec
    st.session_state[PRESET_KEY] = name
    query = _preset_query(name, st.query_params.to_dict())
    if page.url_path != p.page:
        st.switch_page(page_file(p.page), query_params=query)
    st.query_params.from_dict(query)


def preset_picker() -> None:
    """The sidebar's presets: one button each; a click opens the preset's experiment, page and choices."""
    with st.expander("Teaching presets", icon=":material/school:"):
        st.caption("One lesson of the survey each, on the digits experiment (models train once if not cached).")
        for name, p in PRESETS.items():
            if st.button(p.title, key=f"preset-{name}", help=p.lesson, width="stretch"):
                apply_preset(name)


@st.cache_data(show_spinner=False, max_entries=64)
def _preset_lesson(name: str, exp_id: str, companion_ids: tuple, _exp: Experiment, _companions: tuple):
    """A preset's check() on prepared experiments, once per (preset, experiment and its companions' ids)."""
    by_spec = {c.spec: c for c in _companions}
    return PRESETS[name].check(_exp, prepare=lambda spec: by_spec[spec])


def prepared(spec: Spec) -> Optional[Experiment]:
    """The experiment of `spec` (not the current one): loaded when cached, else trained as a job (None until it
    lands, after drawing its panel; None after an st.error too)."""
    try:
        return _trained_experiment(spec)
    except Exception as e:
        st.error(f"Could not prepare the experiment {spec.key()}: {brief(str(e))}")
        return None


def preset_banner(slot, page) -> None:
    """On a preset's page: its title, its lesson and the lesson's numbers, recomputed from the models at hand. A
    preset stops when its experiment is changed or its page is left."""
    name = st.session_state.get(PRESET_KEY)
    p = PRESETS.get(name)
    if p is None or current_spec() != p.spec or active_user_model(p.spec) or page.url_path != p.page:
        st.session_state.pop(PRESET_KEY, None)
        forget_in_url(PRESET_KEY)
        return
    remember_in_url(PRESET_KEY, name)
    if not is_cached(p.spec) and active_user_model(p.spec) is None:
        return  # its training is the page's own job (drawn there, once); the lesson shows when it has landed
    with slot.container():
        exp = prepared(p.spec)
        companions = tuple(prepared(s) for s in p.companions)
        if exp is None or any(c is None for c in companions):
            return
        try:
            lesson = _preset_lesson(name, experiment_id(exp), tuple(experiment_id(c) for c in companions), exp,
                                    companions)
        except Exception as e:
            st.error(f"The preset's lesson could not be computed: {brief(f'{type(e).__name__}: {e}')}")
            return
        show = st.success if lesson.holds else st.warning
        text = lesson.message if lesson.holds else (
            f"On this machine's model the lesson does not show as expected: {lesson.message}")
        if presenting():
            show(f"**{p.title}.** {text}", icon=":material/school:")
        else:
            with st.container(border=True):
                st.markdown(f"**Preset · {p.title}**  \n{p.lesson}")
                show(text, icon=":material/school:")


# --- images and the sidebar -------------------------------------------------------------------------

def predicted_names(exp: Experiment, split: str, n: int) -> Optional[list[str]]:
    """Class names the classifier predicts for the first n samples of a split; None without a classifier head."""
    logits = exp.outputs[split].logits[:n]
    if logits.ndim != 2 or logits.shape[1] == 0:
        return None
    return [exp.bench.class_names[int(c)] for c in logits.argmax(1)]


def setting_lines(spec: Spec) -> list[str]:
    """The setting-specific part of the sidebar: regime, known classes, normal class, contamination."""
    from ood_core.data.osr_splits import describe, known_classes_of
    from ood_core.spec import REGIME_TITLES

    lines = []
    if spec.setting in ("ood", "osr") and spec.training.regime != "ce":
        lines.append(f"**Training:** {REGIME_TITLES[spec.training.regime]}")
    if spec.setting == "osr":
        try:
            n = DATASETS[spec.dataset].num_classes if spec.dataset in DATASETS else 10
            known = ", ".join(map(str, known_classes_of(spec, n)))
        except ValueError:
            known = "?"
        lines.append(f"**Known classes (K={spec.known_classes}):** {known}")
        if spec.osr_splits != "random" or spec.osr_protocol != "standard":
            lines.append(f"**OSR protocol:** {describe(spec)}")
    if spec.setting in ("nd", "ad"):
        lines.append(f"**Normal class:** {spec.normal_class}")
    if spec.setting == "ad":
        lines.append(f"**Contamination:** {spec.contamination:.0%}")
    return lines


def accuracy_label(spec: Spec) -> str:
    """What the classifier's test accuracy is called in this setting (OSR: on the known classes only)."""
    return "Closed-set accuracy" if spec.setting == "osr" else "ID test accuracy"


def accuracy_help(spec: Spec) -> str:
    """The accuracy's definition, plus what it means in open-set recognition."""
    return metrics.DEFINITIONS["id_accuracy"] + (
        " In open-set recognition: on the known classes only, the ceiling of OSCR." if spec.setting == "osr" else "")


def no_accuracy_note(spec: Spec) -> str:
    """What a one-class setting (ND/AD: no classifier, so no accuracy) reports instead."""
    normal = f"class {spec.normal_class}"
    if spec.setting == "ad":
        trained = (f"a one-class model on {normal}, whose training set is secretly contaminated with "
                   f"{spec.contamination:.0%} anomalies")
        other = "anomalous"
    else:
        trained, other = f"a one-class model on {normal} alone", "novel"
    return (f"No ID accuracy in this setting: it trains {trained}, and such a model has no classifier. What it "
            f"reports is how well the score separates {normal}'s test images (ID) from the {other} ones (every "
            "other class): AUROC and the detection metrics.")


def device_line() -> str:
    """Where this server trains and runs models (ood_core.device), in one line; a wrong OOD_DEVICE says what is wrong."""
    try:
        return f"Device: {describe_device()}"
    except ValueError as e:
        return f"Device: {e}"


def cache_words(spec, info: dict, user) -> str:
    """The sidebar's "Model from cache" value. A page that does not load the model (Methods) has no load to report:
    it says whether the model is on disk instead of a wrong "no"."""
    if info or user:
        return ("yes" if info.get("from_cache") else "no") + (f" ({info['source']})" if info.get("source") else "")
    return "on disk, not loaded by this page" if is_cached(spec) else "not trained yet"


def render_sidebar(slot) -> None:
    """The shared sidebar: the current experiment, read from session_state."""
    spec = current_spec()
    info = st.session_state.get(INFO_KEY) or {}
    if info.get("spec_key") != spec.key():
        info = {}
    user = active_user_model(spec)
    with slot:
        st.markdown("#### Current experiment")
        ds = DATASETS.get(spec.dataset)
        acc = f"{info['accuracy']:.1%}" if info.get("accuracy") is not None else "—"
        classifier = spec.setting in CLASSIFIER_SETTINGS
        lines = [
            f"**Setting:** {SETTING_TITLES.get(spec.setting, spec.setting)}",
            f"**Dataset:** {ds.title if ds else spec.dataset} · {spec.image_size} px"
            + (f" · ≤ {spec.train_per_class} training images per class" if spec.train_per_class else ""),
            f"**Model:** {spec.model}" + (f" — uploaded `{user['name']}`" if user else ""),
            # one-class models train with their own fixed epochs and classify nothing: no epochs, no accuracy
            f"**Seed:** {spec.seed}" + (f" · **Epochs:** {spec.training.epochs}" if classifier else ""),
            *setting_lines(spec),
            *([f"**{accuracy_label(spec)}:** {acc}"] if classifier else []),
            f"**Model from cache:** {cache_words(spec, info, user)}",
        ]
        st.markdown("  \n".join(lines))
        prov = provenance_line(info.get("provenance") or {})
        if prov:
            st.caption(f"Model provenance: {prov}")
        st.caption((ds.description + " · " if ds else "") + f"spec key `{spec.key()}`")
        st.caption(device_line())
        sync_query_params(spec)
        st.caption("Link to this view (the experiment is in the address; opened elsewhere it trains the model if "
                   "that machine has not cached it):")
        st.code(view_link(), language=None, wrap_lines=True)
