"""OOD Explorer: the Streamlit entry point. Run with `streamlit run app.py`.

Sets up the page, the navigation over the pages (each later page joins PAGES with one line), the
shared sidebar that shows the current experiment, presentation mode and the teaching presets.
"""
import streamlit as st

from ood_core import serving
from pages import _support as ui

serving.configure_process()  # once per server: torch and BLAS threads per request (OOD_EXPLORER_THREADS, shared mode)

# an emoji favicon is drawn locally; a ":material/...:" favicon would be fetched from the internet
# presentation mode (a link with present=1) starts with the sidebar folded away, for the chart's width
st.set_page_config(page_title="OOD Explorer", page_icon="🔎", layout="wide",
                   initial_sidebar_state="collapsed" if st.query_params.get(ui.PRESENT_KEY) == "1" else "auto")

PAGES = [
    st.Page("pages/experiment.py", title="Experiment", icon=":material/model_training:", default=True),
    st.Page("pages/scores.py", title="Scores", icon=":material/bar_chart:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/table_chart:"),
    st.Page("pages/sensitivity.py", title="Sensitivity", icon=":material/tune:"),
    st.Page("pages/methods.py", title="Methods", icon=":material/menu_book:"),
    st.Page("pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:", url_path="embeddings"),
    st.Page("pages/activations.py", title="Activations", icon=":material/equalizer:", url_path="activations"),
    st.Page("pages/explanations.py", title="Explanations", icon=":material/visibility:", url_path="explanations"),
]

page = st.navigation(PAGES)
ui.init_presentation()  # presentation mode (present=1 or the sidebar toggle): larger text, main chart first
ui.read_link(page)  # a session's first run: a link to a preset opens its experiment, page and choices
st.sidebar.caption("**OOD Explorer** — is this sample unlike the training data?")
sidebar_slot = st.sidebar.container()  # filled after the page ran, so it shows what the page just prepared
with st.sidebar:
    ui.presentation_toggle()
    ui.preset_picker()  # a click switches to the preset's page
banner_slot = st.empty()  # a preset's lesson, above the page, filled once the page has prepared its experiment
try:
    page.run()
    ui.preset_banner(banner_slot, page)
finally:
    ui.render_sidebar(sidebar_slot)
    ui.umap_warmup()  # once per server process, in the background, after the first page is drawn
