"""Serve MathJax from the book itself, so that math renders with no network.

Sphinx's ``sphinx.ext.mathjax`` loads MathJax 3 from a CDN by default. This extension

1. points ``mathjax_path`` at ``_static/mathjax/tex-chtml-full.js`` (a path relative to
   ``_static``, which Sphinx resolves per page), and
2. copies that file, with the few other MathJax files it may load at run time, from the pip
   package ``django-static-mathjax`` (MathJax 3.2.2, import name ``mathjax``) into the built
   ``_static/mathjax/``.

Why ``tex-chtml-full.js``: it is one combined component holding the loader, the startup
module, TeX input with *every* TeX extension already included (ams, newcommand,
configmacros for our ``mathjax3_config`` macros, cancel, mathtools, ...), CommonHTML output,
the context menu and assistive MathML. So rendering a page loads nothing else from MathJax
except the CommonHTML web fonts (``output/chtml/fonts/woff-v2/*.woff``), and the TeX
``autoload``/``require`` mechanism never has to fetch an extension.

MathJax's context menu (right-click on any formula) loads more components when a reader asks
for them: the accessibility tools (Accessibility → Activate, speech, braille, collapsible math:
``a11y/*.js``, the MathML input ``input/mml.js`` that semantic enrichment needs, and the speech
rule maps ``sre/mathmaps/*.json``), and the SVG renderer (Math Settings → Renderer → SVG:
``output/svg.js`` and its font). It also loads the accessibility tools at start-up when a reader
switched them on in an earlier visit. Those files are copied too, so every menu item works
offline (about 5.5 MB of the 7 MB); ``offline_mathjax_menu = False`` leaves them out, at the
price of those menu items failing.

The configuration (``mathjax3_config``, with the course macros) is untouched: Sphinx still
writes it as ``window.MathJax = {...}`` before the script tag. Nothing in jupyter-book or
myst-nb sets ``mathjax_path``; this extension sets it at ``config-inited`` with a late
priority, and checks at ``builder-inited`` that it still holds, so a later override fails
the build instead of silently putting a CDN back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: the combined component the book loads (relative to MathJax's es5/ directory)
COMPONENT = "tex-chtml-full.js"
#: where it lands, relative to the built _static/ (this is what mathjax_path holds)
TARGET = "mathjax"
#: files (globs, relative to es5/) the component loads at run time
RUNTIME_FILES = ["output/chtml/fonts/woff-v2/*.woff"]
#: files the context menu loads on request (accessibility tools, the SVG renderer)
MENU_FILES = ["a11y/*.js", "input/mml.js", "sre/mathmaps/*.json", "output/svg.js", "output/svg/fonts/tex.js"]


def mathjax_es5_dir() -> Path:
    """MathJax's es5/ directory inside the installed django-static-mathjax package."""
    try:
        import mathjax  # django-static-mathjax
    except ImportError as exc:  # pragma: no cover - a broken environment
        raise ExtensionError(
            "offline_mathjax needs the pip package django-static-mathjax (import name 'mathjax'); "
            "run `make setup`"
        ) from exc
    es5 = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (es5 / COMPONENT).is_file():
        raise ExtensionError(f"offline_mathjax: {es5 / COMPONENT} is missing")
    return es5


def mathjax_path() -> str:
    return f"{TARGET}/{COMPONENT}"


def files_to_copy(es5: Path, menu: bool) -> list[Path]:
    """The MathJax files the book needs, as paths relative to ``es5``."""
    patterns = [COMPONENT, *RUNTIME_FILES, *(MENU_FILES if menu else [])]
    files: list[Path] = []
    for pattern in patterns:
        found = sorted(p.relative_to(es5) for p in es5.glob(pattern) if p.is_file())
        if not found:
            raise ExtensionError(f"offline_mathjax: no file matches {pattern!r} under {es5}")
        files += found
    return files


def set_mathjax_path(app: Sphinx, config: Config) -> None:
    from sphinx.ext.mathjax import MATHJAX_URL

    if config.mathjax_path not in (MATHJAX_URL, mathjax_path()):
        logger.info(f"offline_mathjax: mathjax_path {config.mathjax_path!r} -> {mathjax_path()!r}")
    config.mathjax_path = mathjax_path()


def check_mathjax_path(app: Sphinx) -> None:
    if app.config.mathjax_path != mathjax_path():
        raise ExtensionError(
            f"offline_mathjax: mathjax_path was changed to {app.config.mathjax_path!r} after "
            f"this extension set it to {mathjax_path()!r}; the book would need the network"
        )


def copy_mathjax(app: Sphinx) -> None:
    """Copy at builder-inited, before pages are written (Sphinx then adds a ?v= checksum)."""
    if app.builder.format != "html":
        return
    es5 = mathjax_es5_dir()
    dest_root = Path(app.outdir) / "_static" / TARGET
    copied = 0
    for rel in files_to_copy(es5, app.config.offline_mathjax_menu):
        src, dest = es5 / rel, dest_root / rel
        if dest.is_file() and dest.stat().st_size == src.stat().st_size \
                and dest.stat().st_mtime >= src.stat().st_mtime:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        copied += 1
    logger.info(f"offline_mathjax: {copied} MathJax file(s) copied to {dest_root}")


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.mathjax")
    app.add_config_value("offline_mathjax_menu", True, "html", [bool])
    mathjax_es5_dir()  # fail early when the package is missing
    # late priority: run after any other config-inited handler
    app.connect("config-inited", set_mathjax_path, priority=900)
    app.connect("builder-inited", check_mathjax_path)
    app.connect("builder-inited", copy_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
