"""Sphinx configuration of the ddpm_jax documentation (`make docs`)."""

import os
import sys

ROOT = os.path.abspath("..")
sys.path.insert(0, ROOT)  # autodoc documents this checkout's ddpm_jax
# The notebooks' kernels inherit this: they import this checkout's ddpm_jax and configs/.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

project = "ddpm_jax"
author = "ddpm_jax authors"
copyright = "2026, ddpm_jax authors"

extensions = [
    "myst_nb",  # MyST markdown and MyST notebooks (parses .md and .ipynb)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]

# --- MyST -----------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- notebooks: executed at every build, on CPU; a failing cell fails the build ------------
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_show_tb = True
nb_merge_streams = True

# --- math: MathJax ------------------------------------------------------------------------
# Sphinx loads MathJax 3 from a CDN by default, which a machine without network cannot reach.
# `make docs` installs Debian's libjs-mathjax (MathJax 2.7) and the pages load it from there, so a
# local build renders its math offline. DOCS_MATHJAX_PATH overrides it (e.g. "" for the CDN when
# publishing the site elsewhere).
LOCAL_MATHJAX = "/usr/share/javascript/mathjax/MathJax.js"
mathjax_path = os.environ.get(
    "DOCS_MATHJAX_PATH", f"file://{LOCAL_MATHJAX}?config=TeX-AMS-MML_HTMLorMML"
    if os.path.exists(LOCAL_MATHJAX) else "")
if mathjax_path.startswith("file://"):  # MathJax 2: the classes Sphinx marks math with
    mathjax2_config = {
        "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                    "processEscapes": True, "processEnvironments": True,
                    "ignoreClass": "tex2jax_ignore|mathjax_ignore|document",
                    "processClass": "tex2jax_process|mathjax_process|math|output_area"},
    }
elif not mathjax_path:
    del mathjax_path  # Sphinx's default: MathJax 3 from the CDN

# --- API reference from the docstrings (Google style) ---------------------------------------
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# --- HTML ----------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "ddpm_jax"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
