"""Experiment page: what the data and model are, a form to train / load another, examples of ID and OOD images."""
import time
from pathlib import Path
from typing import Optional

import streamlit as st

from ood_core import estimates, figures, serving, settings
from ood_core.data import DATASETS, OOD_SETS, DataError, data_root, datasets, sources
from ood_core.data.auxiliary import AUX_RECIPES
from ood_core.data import osr_splits
from ood_core.data.registry import register_user_ood_set
from ood_core.models import loading
from ood_core.models.registry import MODELS, unfit_reasons
from ood_core.spec import CLASSIFIER_SETTINGS, OSR_SPLIT_MODES, REGIME_EPOCHS, REGIME_TITLES, SETTING_TITLES, SETTINGS
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
    n = DATASETS[spec.dataset].num_classes if spec.dataset in DATASETS else 10
    try:
        known = osr_splits.known_classes_of(spec, n) if setting == "osr" else None
    except ValueError:  # a protocol that does not fit the current dataset: the diagram shows no known classes
        known = None
    plus = osr_splits.CIFAR_PLUS.get(spec.osr_protocol) if setting == "osr" else None
    if plus:
        st.caption(f"CIFAR+{plus}: the unknowns at test are {plus} CIFAR-100 animal classes, not CIFAR-10's other "
                   "classes, which this protocol does not use.")
    st.plotly_chart(figures.setting_diagram(setting, n, known=known, normal=spec.normal_class,
                                            contamination=spec.contamination if setting == "ad" else 0.0,
                                            external_unknowns=f"{plus} CIFAR-100 classes" if plus else None),
                    width="stretch", key=f"setting-diagram-{setting}", config={"displayModeBar": False})
    return setting


def dataset_label(name: str) -> str:
    info = DATASETS[name]
    return info.title + ("" if info.found() else " — not found")


def dataset_picker() -> str:
    """The ID dataset, outside the form so that the form offers its sizes and classes; a dataset whose files are
    absent says where to put them and offers torchvision's download (size first)."""
    spec = ui.current_spec()
    names = list(DATASETS)
    dataset = st.selectbox("ID dataset", names, index=names.index(spec.dataset) if spec.dataset in names else 0,
                           format_func=dataset_label, key="dataset-picker",
                           help="\n".join(f"- **{DATASETS[n].title}**: {DATASETS[n].description}" for n in names)
                           + f"\n\nDatasets are read from `{data_root()}` (set `OOD_DATA_ROOT` to change it) in "
                             "torchvision's own layouts.")
    info = DATASETS[dataset]
    if not info.found():
        st.warning(f"**{info.title}** is not on this machine: {info.status()}.")
        if info.fetchable:
            size = sources.download_bytes(dataset) / 2**20
            if st.button(f"Download {info.title} (about {size:,.0f} MB) with torchvision", key=f"fetch-{dataset}"):
                bar = st.progress(0.0, text=f"Downloading {info.title}…")
                try:
                    sources.fetch(dataset, data_root(), progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), text=m))
                except (DataError, OSError) as e:
                    st.error(f"The download failed: {e}")
                else:
                    bar.progress(1.0, text="Done")
                    st.rerun()
    return dataset


def size_picker(dataset: str) -> int:
    """The image side, outside the form (like the dataset) so that the form offers only the models that accept it;
    another dataset starts from its own default size."""
    spec = ui.current_spec()
    info = DATASETS[dataset]
    sizes = list(datasets.SIZES)
    size = spec.image_size if dataset == spec.dataset else info.default_size
    return int(st.selectbox(
        "Image size (px)", sizes, index=sizes.index(size) if size in sizes else sizes.index(info.default_size),
        key=f"image-size-{dataset}",
        help=f"Images are resized to this side (bilinear, antialiased when shrinking); {info.title} is "
             f"{info.native_size} px. Larger costs more time per epoch. The models offered below are those that "
             "accept this size."))


def model_picker(setting: str, channels: int, side: int) -> Optional[str]:
    """The models of the registry that serve `setting` and accept (channels, side) images; the help lists each with
    what it is, and says which models are not offered here and why. None (with the reasons) when no model fits."""
    spec = ui.current_spec()
    models = settings.models_for(setting, channels, side)
    left_out = unfit_reasons(setting, channels, side)
    if not models:
        st.error(f"No model for {SETTING_TITLES[setting].lower()} takes {channels}-channel {side} px images: "
                 + "; ".join(f"{MODELS[n].short}: {reason}" for n, reason in left_out.items()) + ".")
        return None
    why_not = "".join(f"\n- **{MODELS[n].title}**: {reason}." for n, reason in left_out.items())
    help_text = "\n".join(f"- **{MODELS[n].title}** ({MODELS[n].contract.describe()}): {MODELS[n].description}"
                          for n in models)
    if why_not:
        help_text += f"\n\nNot offered for {channels}-channel {side} px images:" + why_not
    label = "Classifier" if setting in CLASSIFIER_SETTINGS else "One-class model"
    choice = st.selectbox(label, models, index=models.index(spec.model) if spec.model in models else 0,
                          format_func=lambda m: MODELS[m].title, help=help_text)
    if left_out:
        st.caption(f"Not offered at {side} px: " + "; ".join(
            f"{MODELS[n].short} ({MODELS[n].contract.sides_text()})" for n in left_out) + ".")
    return choice


def own_dataset_box() -> None:
    """Upload a .zip of class folders or an .npz (images, labels) as the ID dataset."""
    with st.expander("Use your own images as the ID dataset"):
        st.markdown("A **.zip** with one folder per class (PNG, JPEG, BMP, ...), or an **.npz** with arrays "
                    "`images` (n, h, w[, c]) and `labels` (n,). Images are converted to one size and to grey or "
                    f"colour; archives are checked before anything is decoded (at most "
                    f"{sources.Limits().max_members:,} files, no paths outside the archive, no image bombs).")
        up = st.file_uploader("Images (.zip / .npz)", type=["zip", "npz"], key="own-dataset")
        if up is None:
            return
        import hashlib

        data = up.getvalue()
        name = f"upload-{Path(up.name).stem[:24]}-{hashlib.sha256(data).hexdigest()[:6]}"
        if name not in DATASETS:
            with st.spinner(f"Reading {up.name}…"):
                try:
                    datasets.register_user_dataset(name, data, filename=up.name)
                except (DataError, ValueError) as e:
                    st.error(f"{up.name} cannot be used: {e}")
                    return
        info = DATASETS[name]
        st.success(f"Read **{up.name}**: {info.description}. Pick `{name}` as the ID dataset above.")
        if st.session_state.get("dataset-picker") != name:
            st.button(f"Use {name} now", key="use-own-dataset",
                      on_click=lambda: st.session_state.__setitem__("dataset-picker", name))


def read_ood_upload(up) -> Optional[str]:
    """Register an uploaded file as a natural OOD set (once per file content); its name, or None after an error."""
    import hashlib

    data = up.getvalue()
    wanted = f"upload-{Path(up.name).stem[:24]}-{hashlib.sha256(data).hexdigest()[:6]}"
    read = st.session_state.setdefault("own-ood-read", {})  # file name -> the name it was registered under
    if wanted not in read or read[wanted] not in OOD_SETS:
        with st.spinner(f"Reading {up.name}…"):
            try:
                read[wanted] = register_user_ood_set(wanted, data, filename=up.name)
            except (DataError, ValueError) as e:
                st.error(f"{up.name} cannot be used: {e}")
                return None
    return read[wanted]


def own_ood_box() -> None:
    """Upload a .zip or .npz of unlabelled images as an extra OOD set of every page's experiment (this session)."""
    names = ui.user_ood_sets()
    with st.expander("Add your own images as an OOD set", expanded=bool(names)):
        st.markdown("A **.zip** of images (any folders) or an **.npz** with an array `images` (n, h, w[, c]): "
                    "images your model should flag as unfamiliar. They are converted to the experiment's size and "
                    "channels, run through the model once, and offered as an OOD set on every page (a fifth of the "
                    "ID test size is drawn, as for the other sets). The same checks as for datasets apply.")
        up = st.file_uploader("OOD images (.zip / .npz)", type=["zip", "npz"],
                              key=f"own-ood-{st.session_state.get('own-ood-n', 0)}")
        name = read_ood_upload(up) if up is not None else None
        if name is not None:
            if name not in names:
                st.session_state[ui.USER_OOD_KEY] = names = [*names, name]
            st.success(f"Added **{name}** ({OOD_SETS[name].description}) as an OOD set.")
        for name in names:
            c1, c2 = st.columns([4, 1], vertical_alignment="center")
            c1.caption(f"OOD set `{name}`: {OOD_SETS[name].description}")
            if c2.button("Remove", key=f"remove-ood-{name}"):
                st.session_state[ui.USER_OOD_KEY] = [n for n in names if n != name]
                st.session_state["own-ood-n"] = st.session_state.get("own-ood-n", 0) + 1  # an empty uploader
                st.rerun()


def osr_protocol_picker(dataset: str) -> tuple[str, str]:
    """OSR only, outside the form (K follows from it): the protocol (CIFAR+10 / +50 on CIFAR-10, when CIFAR-100 is
    there) and the splits (random, or the literature's published ones where they exist). Returns (splits, protocol)."""
    spec = ui.current_spec()
    protocols = ["standard"]
    if dataset == "cifar10":
        if DATASETS["cifar100"].found():
            protocols += list(osr_splits.CIFAR_PLUS)
        else:
            st.caption(f"CIFAR+10 / CIFAR+50 take their unknowns from CIFAR-100, which is "
                       f"{DATASETS['cifar100'].status()}.")
    protocol = "standard"
    if len(protocols) > 1:
        protocol = st.selectbox("OSR protocol", protocols, key="osr-protocol",
                                index=protocols.index(spec.osr_protocol) if spec.osr_protocol in protocols else 0,
                                format_func=lambda p: osr_splits.PROTOCOL_TITLES[p],
                                help="CIFAR+N (Neal et al. 2018): train on 4 CIFAR-10 classes; the unknowns are "
                                     "CIFAR-100 test images of 10 or 50 animal classes.")
    if not osr_splits.has_literature_splits(dataset, protocol):
        st.caption("Splits: random (the seed draws the known classes); the OSR literature shares no fixed splits "
                   "for this dataset.")
        return "random", protocol
    modes = list(OSR_SPLIT_MODES)
    mode = st.radio("Splits", modes, index=modes.index(spec.osr_splits), horizontal=True, key="osr-splits",
                    format_func=lambda m: {"random": "Random (seeded)", "literature": "Literature (fixed)"}[m],
                    help="Random: the seed draws the known classes. Literature: the fixed splits shared since Neal "
                         "et al. 2018 (ARPL's and Vaze et al.'s code), for numbers comparable with the papers; "
                         "seed i is published split i.")
    return mode, protocol


PER_CLASS_KEY, PER_CLASS_FOR = "experiment-per-class", "experiment-per-class-for"


def experiment_form(setting: str, dataset: str, size: int, osr: tuple[str, str] = ("random", "standard")):
    """The spec form for `dataset` at `size` px (`osr`: the OSR splits and protocol picked above it); returns (the
    new Spec or None when not submitted or invalid, retrain flag)."""
    spec = ui.current_spec()
    info = DATASETS[dataset]
    n_classes = info.num_classes
    same = dataset == spec.dataset  # the current spec's values; another dataset starts from its own defaults
    extra: dict = {"setting": setting, "image_size": size}
    with st.form("experiment-form"):
        st.markdown(f"**Choose the experiment** · {SETTING_TITLES[setting]} · {info.title} · {size} px")
        suggested = 0 if same else ui.suggested_per_class(setting, dataset, size, info.default_epochs)
        # the field starts from the current spec's cap (or the suggestion for another dataset) and follows the
        # suggestion when the dataset, setting or size changes, unless the user has typed a value of their own
        marker, last = (dataset, setting, size), st.session_state.get(PER_CLASS_FOR)
        if last is None or PER_CLASS_KEY not in st.session_state \
                or (last[0] != marker and st.session_state[PER_CLASS_KEY] == last[1]):
            st.session_state[PER_CLASS_KEY] = spec.train_per_class if same else suggested
        st.session_state[PER_CLASS_FOR] = (marker, st.session_state[PER_CLASS_KEY])
        extra["train_per_class"] = int(st.number_input(
            "Training images per class (0 = all)", min_value=0, step=50, key=PER_CLASS_KEY,
            help="A seeded draw of at most this many training images of each class: trains faster on a CPU."
                 + (f" {suggested:,} is suggested for {info.title}: training on every image is estimated to take "
                    f"over {estimates.SUGGESTED_TRAINING_S:.0f} s on this CPU; 0 trains on all." if suggested else "")))
        if suggested and extra["train_per_class"] == suggested:
            st.caption(f"Training on {suggested:,} images per class (a seeded draw) so that it takes about a "
                       "minute here; set 0 to train on every image.")
        c1, c2 = st.columns(2)
        seed = c1.number_input("Seed", min_value=0, value=spec.seed, step=1,
                               help="Fixes the data split, the initialisation and the batch order.")
        epochs = spec.training.epochs if same else info.default_epochs
        lr, batch = float(spec.training.lr), spec.training.batch_size
        if setting in ("ood", "osr"):
            shared = serving.shared_mode()  # a classroom server bounds what one visitor can start
            limits = serving.SHARED_LIMITS
            note = (f" This server is shared: at most {limits.max_epochs} epochs and a batch size of at least "
                    f"{limits.min_batch_size}." if shared else "")
            epochs = c2.number_input("Epochs", min_value=1, max_value=limits.max_epochs if shared else 500,
                                     value=min(epochs, limits.max_epochs) if shared else epochs,
                                     step=1, help="Passes over the training split. The closed-set recipe trains longer: "
                                     + ", ".join(f"{n} epochs for {REGIME_TITLES[r].split(' (')[0]}"
                                                 for r, n in REGIME_EPOCHS.items()) + " (the CLI's default)." + note)
            lr = c1.number_input("Learning rate", min_value=0.0, max_value=10.0, value=float(spec.training.lr),
                                 step=0.0005, format="%.4f",
                                 help="Peak learning rate of AdamW: a one-cycle schedule, or in the closed-set recipe a "
                                      "linear warm-up then a cosine decay.")
            batch = c2.number_input("Batch size", min_value=limits.min_batch_size if shared else 1, max_value=4096,
                                    value=max(spec.training.batch_size, limits.min_batch_size) if shared
                                    else spec.training.batch_size, step=16, help="Images per training step." + note)
        else:
            c2.caption("Each one-class model trains with its own fixed, documented hyper-parameters "
                       "(see ood_core/models/oneclass.py).")
        extra["model"] = model_picker(setting, info.channels, size)
        if setting in ("ood", "osr"):
            regimes = list(REGIME_TITLES)
            extra["regime"] = st.selectbox("Training regime", regimes, index=regimes.index(spec.training.regime),
                                           format_func=lambda r: REGIME_TITLES[r],
                                           help="Outlier exposure trains with auxiliary outliers made from ID "
                                                "training images only — " + "; ".join(AUX_RECIPES.values()) +
                                                " — disjoint from every test OOD set. RPL and ARPL learn one "
                                                "reciprocal point per class and use the distances to them as "
                                                "logits (the head stays linear, up to a shift shared by all "
                                                "classes); their own score is the detector 'RPL / ARPL'. ARPL+CS, "
                                                "CROSR and OSRCI also train a small GAN or decoder beside the "
                                                "classifier (slower; the estimate says how much).")
        if setting == "osr":
            extra.update(osr_splits=osr[0], osr_protocol=osr[1])
            fixed = osr_splits.fixed_known(dataset, *osr)
            if fixed is not None:
                st.caption(f"Known classes K = {fixed}, fixed by the protocol.")
                extra["known_classes"] = fixed
            else:
                k = spec.known_classes if same or dataset not in osr_splits.DEFAULT_KNOWN \
                    else osr_splits.default_known(dataset)
                extra["known_classes"] = int(st.number_input("Known classes K", min_value=2,
                                                             max_value=max(2, n_classes - 1),
                                                             value=min(k, max(2, n_classes - 1)), step=1,
                                                             help=f"K of the {n_classes} classes are known; the seed "
                                                                  "draws which."))
        if setting in ("nd", "ad"):
            extra["normal_class"] = int(st.number_input("Normal class", min_value=0, max_value=n_classes - 1,
                                                        value=min(spec.normal_class, n_classes - 1), step=1,
                                                        help=f"The class index, 0..{n_classes - 1}."))
        if setting == "ad":
            extra["contamination"] = float(st.slider("Contamination ratio", 0.0, 0.45, float(spec.contamination),
                                                     step=0.01, format="%.2f",
                                                     help="Fraction of the training set drawn, unlabelled, from "
                                                          "the other classes."))
        retrain = st.checkbox("Retrain even if a cached model exists", key="retrain-anyway")
        submitted = st.form_submit_button("Train / load model", type="primary")
    if not submitted or extra["model"] is None:
        return None, False
    try:
        new = ui.make_spec(spec, dataset, seed, epochs, lr, batch, **extra)
        if setting == "osr":
            osr_splits.known_classes_of(new, n_classes)  # a seed with no published split is refused here, in words
        return new, retrain
    except ValueError as e:
        st.error(f"Invalid setting: {e}")
        return None, False


def upload_box() -> None:
    """'Use your own model': a state_dict (of this experiment's model or a named architecture), an exported program
    (.pt2) or a TorchScript file, scored on the current data on every page instead of the trained model."""
    with st.expander("Use your own model"):
        spec = ui.current_spec()
        st.markdown(
            "Upload a classifier for these images and classes. An **exported program** (`torch.export.save`, `.pt2`) "
            "or a **TorchScript** file (`torch.jit.save`) needs nothing else: the penultimate features, the linear "
            "head and the Grad-CAM layer are found in its graph. A **state_dict** (`torch.save(model.state_dict(), "
            f"path)`) needs its architecture: this experiment's `{spec.model}` or any torchvision classifier. Weights "
            "are read with `weights_only=True` (a file that would run code is refused).")
        archs = [ui.OWN_ARCH, *[a for a in loading.architectures() if a != spec.model]]
        c1, c2 = st.columns(2)
        arch = c1.selectbox("Architecture (state_dict only)", archs, key="upload-arch",
                            format_func=lambda a: f"this experiment's ({spec.model})" if a == ui.OWN_ARCH else a,
                            help="Ignored for .pt2 and TorchScript files, which carry their network.")
        norm = c2.selectbox("Input normalisation the model expects", list(ui.INPUT_NORMS), key="upload-norm",
                            format_func=ui.INPUT_NORMS.get,
                            help="How the model's training normalised its inputs; the images are converted to its "
                                 "channels and size inside the forward pass, so gradients (ODIN, Grad-CAM) see it.")
        up = st.file_uploader("Model file (.pt / .pth / .pt2)", type=["pt", "pth", "pt2"], key=ui.upload_widget_key())
        if up is not None:
            with st.spinner(f"Checking {up.name} on these images…"):
                error = ui.use_uploaded_model(up.name, up.getvalue(), arch, norm)
            if error:
                st.error(error)
        pretrained_box(spec)
        user = ui.active_user_model(spec)
        if user:
            st.success(f"Using your model `{user['name']}` on every page.")
            info = user.get("info")
            if info:
                st.caption(" · ".join(loading.summary_lines(info)[:3]))
                skipped = info.get("detectors", {}).get("unavailable", {})
                if skipped:
                    st.caption("Detectors this model cannot serve: " + "; ".join(
                        f"**{name}** ({why})" for name, why in skipped.items()))
            st.button("Use the trained model again", on_click=ui.reset_upload)


def pretrained_box(spec) -> None:
    """Torchvision's pretrained weights by their enum name: what they are (size, classes, input) before anything is
    downloaded, and a button that downloads them (into torchvision's own cache) only when clicked."""
    name = st.text_input("…or torchvision's pretrained weights", key="pretrained-name",
                         placeholder="e.g. ResNet18_Weights.IMAGENET1K_V1",
                         help="The enum name as torchvision writes it. Nothing is downloaded until you click; the "
                              "weights' own transforms set the input size and normalisation. Their classes must be "
                              "the dataset's (e.g. ImageNet weights with an image folder of ImageNet classes).").strip()
    if not name:
        return
    try:
        info = loading.weights_info(name)
    except ValueError as e:
        st.error(str(e))
        return
    where = "in torchvision's cache" if info["cached"] else "not downloaded yet"
    st.caption(f"**{name}**: {info['architecture']}, {info['parameters']:,} parameters, {info['classes']:,} classes, "
               f"input {info['input']}, {info['size_mb']:.1f} MB, {where}.")
    n_classes = DATASETS[spec.dataset].num_classes
    if info["classes"] and info["classes"] != n_classes:
        st.warning(f"These weights give {info['classes']:,} classes and `{spec.dataset}` has {n_classes}: use them "
                   "with a dataset of the same classes (an image folder of ImageNet classes, say).")
        return
    label = "Use these weights" if info["cached"] else f"Download ({info['size_mb']:.0f} MB) and use these weights"
    if st.button(label, key="use-pretrained"):
        with st.spinner("Downloading the weights into torchvision's cache…" if not info["cached"] else "Loading…"):
            error = ui.use_pretrained(name, fetch=not info["cached"])
        if error:
            st.error(error)


def show_examples(exp) -> None:
    """A row of ID test images with label and prediction, then a few examples of each OOD set."""
    bench = exp.bench
    st.subheader("Example images")
    n = min(N_ID_EXAMPLES, len(bench.test))
    preds = ui.predicted_names(exp, "test", n)
    truth = [bench.class_names[int(y)] for y in bench.test.y[:n]]
    st.markdown(f"**ID test images** ({exp.spec.dataset})" + (" — caption: true label → predicted class" if preds else ""))
    st.image(figures.upscale(bench.to_pixels(bench.test.images[:n])), width=64,
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
                st.image(figures.upscale(bench.to_pixels(bench.ood[name].images[:k]), 3), width=44,
                         caption=ui.predicted_names(exp, name, k))


def main() -> None:
    st.title("Experiment: the data and the model")
    ui.tutorial(INTRO)
    setting = setting_picker()
    left, right = st.columns([2, 3], gap="large")
    with left:
        dataset = dataset_picker()
        size = size_picker(dataset)
        osr = osr_protocol_picker(dataset) if setting == "osr" else ("random", "standard")
        new_spec, retrain = experiment_form(setting, dataset, size, osr)
        own_dataset_box()
        own_ood_box()
        if new_spec is not None:  # the form trains or loads the spec's own model, not an upload
            ui.reset_upload()
        upload_box()
    with right:
        t0 = time.perf_counter()
        if new_spec is not None:
            ui.set_spec(new_spec)
        exp = ui.get_experiment(retrain=retrain, requested=new_spec is not None)
        if exp is None:
            return
        source = ui.last_preparation().get("source", "")
        if source == "trained just now":  # its training job landed in this run
            # the epochs it trained: one-class models train their own number (their trainers' defaults), not the
            # spec's classifier epochs
            epochs, seconds = len(exp.training.history) or exp.spec.training.epochs, float(exp.training.seconds or 0.0)
            st.success(f"Trained a new model: {epochs} epoch{'s' if epochs != 1 else ''} in {seconds:.1f} s. "
                       "It is cached on disk for next time.")
        elif new_spec is not None:
            seconds = time.perf_counter() - t0
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
