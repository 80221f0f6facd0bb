"""Experiment page: what the data and model are, a form to train / load another, examples of ID and OOD images."""
import time

import streamlit as st

from ood_core import figures, serving, settings
from ood_core.data import DATASETS, OOD_SETS
from ood_core.data.auxiliary import AUX_RECIPES
from ood_core.data.benchmark import known_classes_for
from ood_core.models.registry import ONE_CLASS_TITLES
from ood_core.spec import REGIME_TITLES, SETTING_TITLES, SETTINGS
from pages import _support as ui

N_ID_EXAMPLES = 16
N_OOD_EXAMPLES = 5

INTRO = """
**What am I looking at?** A small convolutional network is trained to classify the images of an
*in-distribution* (ID) dataset. Out-of-distribution (OOD) detection asks: *is a new image unlike the
training data?* The OOD sets below are made from noise or by transforming ID test images (rotating,
mirroring, inverting, shuffling pixels). The network still predicts a class for them — often confidently —
which is why we need a detector. Train or load a model here, then open **Scores** to see how well each
detector tells ID from OOD.
"""


def setting_picker() -> str:
    """The setting first (outside the form, so the form offers only what fits it), explained with a diagram."""
    spec = ui.current_spec()
    setting = st.radio("Setting", SETTINGS, index=SETTINGS.index(spec.setting), horizontal=True,
                       format_func=lambda s: SETTING_TITLES[s], key="setting-picker",
                       help="The survey's four settings share one question — is this sample unlike the "
                            "training data? — and differ in what the model sees at training and at test.")
    ui.tutorial(settings.EXPLANATIONS[setting])
    n = 10
    known = known_classes_for(spec.seed, n, spec.known_classes) if setting == "osr" else None
    st.plotly_chart(figures.setting_diagram(setting, n, known=known, normal=spec.normal_class,
                                            contamination=spec.contamination if setting == "ad" else 0.0),
                    width="stretch", key=f"setting-diagram-{setting}", config={"displayModeBar": False})
    return setting


def experiment_form(setting: str):
    """The spec form; returns (the new Spec or None when not submitted or invalid, retrain flag)."""
    spec = ui.current_spec()
    names = list(DATASETS)
    extra: dict = {"setting": setting}
    with st.form("experiment-form"):
        st.markdown(f"**Choose the experiment** · {SETTING_TITLES[setting]}")
        dataset = st.selectbox("ID dataset", names, index=names.index(spec.dataset) if spec.dataset in names else 0,
                               help="\n".join(f"- **{n}**: {DATASETS[n].description}" for n in names))
        c1, c2 = st.columns(2)
        seed = c1.number_input("Seed", min_value=0, value=spec.seed, step=1,
                               help="Fixes the data split, the initialisation and the batch order.")
        epochs, lr, batch = spec.training.epochs, float(spec.training.lr), spec.training.batch_size
        if setting in ("ood", "osr"):
            shared = serving.shared_mode()  # a classroom server bounds what one visitor can start
            limits = serving.SHARED_LIMITS
            note = (f" This server is shared: at most {limits.max_epochs} epochs and a batch size of at least "
                    f"{limits.min_batch_size}." if shared else "")
            epochs = c2.number_input("Epochs", min_value=1, max_value=limits.max_epochs if shared else 500,
                                     value=min(spec.training.epochs, limits.max_epochs) if shared else spec.training.epochs,
                                     step=1, help="Passes over the training split." + note)
            lr = c1.number_input("Learning rate", min_value=0.0, max_value=10.0, value=float(spec.training.lr),
                                 step=0.0005, format="%.4f", help="Peak learning rate of AdamW with a one-cycle schedule.")
            batch = c2.number_input("Batch size", min_value=limits.min_batch_size if shared else 1, max_value=4096,
                                    value=max(spec.training.batch_size, limits.min_batch_size) if shared
                                    else spec.training.batch_size, step=16, help="Images per training step." + note)
        else:
            c2.caption("Each one-class model trains with its own fixed, documented hyper-parameters "
                       "(see ood_core/models/oneclass.py).")
        models = settings.models_for(setting)
        if setting in ("ood", "osr"):
            extra["model"] = models[0]
            regimes = list(REGIME_TITLES)
            extra["regime"] = st.selectbox("Training regime", regimes, index=regimes.index(spec.training.regime),
                                           format_func=lambda r: REGIME_TITLES[r],
                                           help="Outlier exposure trains with auxiliary outliers made from ID "
                                                "training images only — " + "; ".join(AUX_RECIPES.values()) +
                                                " — disjoint from every test OOD set.")
        else:
            model = spec.model if spec.model in models else models[0]
            extra["model"] = st.selectbox("One-class model", models, index=models.index(model),
                                          format_func=lambda m: ONE_CLASS_TITLES.get(m, m))
        if setting == "osr":
            extra["known_classes"] = int(st.number_input("Known classes K", min_value=2, max_value=9,
                                                         value=spec.known_classes, step=1,
                                                         help="K of the 10 classes are known; the seed draws which."))
        if setting in ("nd", "ad"):
            extra["normal_class"] = int(st.number_input("Normal class", min_value=0, max_value=9,
                                                        value=spec.normal_class, step=1))
        if setting == "ad":
            extra["contamination"] = float(st.slider("Contamination ratio", 0.0, 0.45, float(spec.contamination),
                                                     step=0.01, format="%.2f",
                                                     help="Fraction of the training set drawn, unlabelled, from "
                                                          "the other classes."))
        retrain = st.checkbox("Retrain even if a cached model exists", key="retrain-anyway")
        submitted = st.form_submit_button("Train / load model", type="primary")
    if not submitted:
        return None, False
    try:
        return ui.make_spec(spec, dataset, seed, epochs, lr, batch, **extra), retrain
    except ValueError as e:
        st.error(f"Invalid setting: {e}")
        return None, False


def upload_box() -> None:
    """'Use your own model': upload a state_dict for the current spec's model and data."""
    with st.expander("Use your own model"):
        spec = ui.current_spec()
        st.markdown(f"Upload a PyTorch **state_dict** (`.pt`, saved with `torch.save(model.state_dict(), path)`) "
                    f"for model `{spec.model}` on `{spec.dataset}`. It is loaded with `weights_only=True` and "
                    "replaces the trained model on every page.")
        up = st.file_uploader("Model weights (.pt / .pth)", type=["pt", "pth"], key=ui.upload_widget_key())
        if up is not None:
            error = ui.use_uploaded_model(up.name, up.getvalue())
            if error:
                st.error(error)
        user = ui.active_user_model(spec)
        if user:
            st.success(f"Using your model `{user['name']}` on every page.")
            st.button("Use the trained model again", on_click=ui.reset_upload)


def show_examples(exp) -> None:
    """A row of ID test images with label and prediction, then a few examples of each OOD set."""
    bench = exp.bench
    st.subheader("Example images")
    n = min(N_ID_EXAMPLES, len(bench.test))
    preds = ui.predicted_names(exp, "test", n)
    truth = [bench.class_names[int(y)] for y in bench.test.y[:n]]
    st.markdown(f"**ID test images** ({exp.spec.dataset})" + (" — caption: true label → predicted class" if preds else ""))
    st.image(figures.upscale(bench.to_pixels(bench.test.x[:n])), width=64,
             caption=[f"{t} → {p}" for t, p in zip(truth, preds)] if preds else truth)
    st.markdown("**OOD sets**" + (" — caption: the class the network predicts anyway" if preds else ""))
    names = exp.ood_names
    for row in range(0, len(names), 4):
        for col, name in zip(st.columns(4), names[row:row + 4]):
            with col:
                info = OOD_SETS.get(name)
                st.markdown(f"**{name}**" + (f" · {info.kind}" if info else ""))
                st.caption(info.description if info else "samples of classes never seen in training")
                k = min(N_OOD_EXAMPLES, len(bench.ood[name]))
                st.image(figures.upscale(bench.to_pixels(bench.ood[name].x[:k]), 3), width=44,
                         caption=ui.predicted_names(exp, name, k))


def main() -> None:
    st.title("Experiment: the data and the model")
    ui.tutorial(INTRO)
    setting = setting_picker()
    left, right = st.columns([2, 3], gap="large")
    with left:
        new_spec, retrain = experiment_form(setting)
        if new_spec is not None:  # the form trains or loads the spec's own model, not an upload
            ui.reset_upload()
        upload_box()
    with right:
        t0 = time.perf_counter()
        if new_spec is not None:
            ui.set_spec(new_spec)
        exp = ui.get_experiment(retrain=retrain)
        if exp is None:
            return
        if new_spec is not None:
            source, seconds = ui.last_preparation().get("source", ""), time.perf_counter() - t0
            if source == "trained just now":
                epochs = exp.spec.training.epochs
                st.success(f"Trained a new model: {epochs} epoch{'s' if epochs != 1 else ''} in {seconds:.1f} s. "
                           "It is cached on disk for next time.")
            else:
                st.info(f"Reused the cached model for this setting ({source}) — ready in {seconds:.1f} s, no training needed.")
        a1, a2 = st.columns(2)
        acc = ui.id_accuracy(exp)
        if acc is None:  # one-class model: no classifier; say what the setting reports instead of an empty metric
            a1.caption(ui.no_accuracy_note(exp.spec))
        else:
            a1.metric(ui.accuracy_label(exp.spec), f"{acc:.1%}", help=ui.accuracy_help(exp.spec))
        a2.metric("Images", f"{len(exp.bench.train)} / {len(exp.bench.val)} / {len(exp.bench.test)}",
                  help="ID train / validation / test split sizes; each OOD set has a fifth of the test size.")
        if exp.training.history:
            st.markdown("**Training curve**")
            st.plotly_chart(figures.training_curve(exp.training.history), width="stretch", key="training-curve")
        else:
            st.info("No training curve: this model was uploaded, not trained here.")
        st.download_button("Download these model weights (.pt state_dict)", ui.state_dict_bytes(exp),
                           file_name=f"{exp.spec.model}-{exp.spec.key()}.pt", mime="application/octet-stream")
    show_examples(exp)
    st.page_link("pages/scores.py", label="Next: compare ID and OOD scores", icon=":material/arrow_forward:")


main()
