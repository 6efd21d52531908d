"""Write each <script> once per page.

sphinx-togglebutton and sphinx-thebe (both loaded by jupyter-book) add inline scripts with
``app.add_js_file(None, body=...)``. Under Sphinx 7 the HTML builder registers such a script
twice, once as filename ``None`` and once, when it re-reads the registry, as ``''``; the two
compare unequal, so every page got each inline script twice. For sphinx-thebe that is
``const THEBE_JS_URL = ...`` declared twice: a SyntaxError ("Identifier 'THEBE_JS_URL' has
already been declared") on every page, which tests/test_book.py reports as a JavaScript error.

This extension drops the second copy of any script that is identical to an earlier one (same
source, or same inline body, and the same attributes), keeping the first in its place. A script
that really differs is never touched.
"""

from __future__ import annotations

from sphinx.application import Sphinx


def _key(script) -> tuple:
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (filename, tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    if len(unique) != len(scripts):
        scripts[:] = unique  # the builder restores its own list after the page


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
