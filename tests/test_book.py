"""The built book, opened in a real browser with no network.

Runs against an already built ``_build/html`` (``jupyter-book build .`` or ``make book``;
``make test`` builds it first) and fails, rather than skips, when there is none. The site is
served over HTTP on 127.0.0.1 and opened in headless Chromium (Debian's ``chromium``, driven by
playwright); every request to any other host is aborted, as if offline, and recorded.

The pages come from ``_toc.yml``: every page of the book is checked for failed requests; every
chapter (``notebooks/``) and exercise (``exercises/``) page also for typeset math, loaded
figures and its Open-in-Colab link. A chapter added to the toc is covered with no change here.

    .venv/bin/python -m pytest -m browser tests/test_book.py -v
"""

from __future__ import annotations

import functools
import http.server
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tools.project import colab_url
from helpers import ROOT, SOURCE_SUFFIXES, toc_files

pytestmark = pytest.mark.browser

HTML = ROOT / "_build" / "html"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


# --------------------------------------------------------------------------- the pages


def source_of(doc: str) -> Path:
    for suffix in SOURCE_SUFFIXES:
        if (ROOT / (doc + suffix)).is_file():
            return Path(doc + suffix)
    raise AssertionError(f"_toc.yml lists {doc!r}, but neither {doc}.ipynb nor {doc}.md exists")


DOCS = toc_files()
CHAPTERS = [d for d in DOCS if d.startswith("notebooks/")]
EXERCISES = [d for d in DOCS if d.startswith("exercises/")]
NOTEBOOK_PAGES = CHAPTERS + EXERCISES
BIBLIOGRAPHY = next((d for d in DOCS if Path(d).name == "bibliography"), "book/bibliography")
ALL_PAGES = ["index", *DOCS]


# --------------------------------------------------------------------------- what a visit records


@dataclass
class Visit:
    """What one page load showed: the page itself and every request it made."""

    page: str
    status: int | None = None
    final_url: str = ""
    local_failures: list[str] = field(default_factory=list)  # 4xx/5xx or failed, on 127.0.0.1
    external: list[str] = field(default_factory=list)  # attempted requests to other hosts (aborted)
    js_errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page
    math_elements: int = 0  # Sphinx's .math spans/divs: math the page should typeset
    mathjax: dict = field(default_factory=dict)
    images: list[dict] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)
    colab_links: list[str] = field(default_factory=list)
    launch_button_visible: bool = False


MATHJAX_JS = """
async () => {
  const math = document.querySelectorAll('.math').length;
  if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) {
    return {math, loaded: false};
  }
  await MathJax.startup.promise;
  await document.fonts.ready;
  const script = [...document.scripts].find(s => /mathjax/i.test(s.src));
  const errors = [...document.querySelectorAll('mjx-merror, [data-mjx-error]')];
  return {
    math, loaded: true, version: MathJax.version,
    src: script ? script.src : null,
    containers: document.querySelectorAll('mjx-container').length,
    untypeset: [...document.querySelectorAll('span.math, div.math')]
      .filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.trim().slice(0, 120)),
    errors: [...new Set(errors.map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120)))],
  };
}
"""

IMAGES_JS = """
async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(done => {
    i.addEventListener('load', done); i.addEventListener('error', done);
  })));
  return imgs.map(i => ({
    src: i.currentSrc || i.src, complete: i.complete, naturalWidth: i.naturalWidth,
    inArticle: !!i.closest('article'),
  }));
}
"""

# TeX delimiters left in the visible text outside code: $$, \( \), \[ \], \begin{,
# and $...$ holding TeX (a backslash, ^ or _), i.e. math that MathJax did not typeset.
RAW_TEX_JS = r"""
() => {
  const root = document.querySelector('article') || document.body;
  const skip = 'pre, code, kbd, samp, script, style, textarea, .highlight, mjx-container';
  const tex = /\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\s][^$]*[\\^_][^$]*\$/;
  const texts = new Map();
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip) || !el.checkVisibility()) continue;
    texts.set(el, (texts.get(el) || '') + n.textContent);
  }
  return [...texts.values()].filter(t => tex.test(t)).map(t => t.trim().slice(0, 160));
}
"""

COLAB_JS = """
() => {
  const links = [...document.querySelectorAll('a[href*="colab.research.google.com"]')];
  const button = document.querySelector('.dropdown-launch-buttons button');
  return {links: links.map(a => a.href), visible: !!button && button.checkVisibility()};
}
"""


# --------------------------------------------------------------------------- fixtures


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def site() -> Path:
    index = HTML / "index.html"
    if not index.is_file():
        pytest.fail(
            f"{index} is missing: run jupyter-book build first "
            "(`.venv/bin/jupyter-book build . --warningiserror --keep-going`, or `make book`)",
            pytrace=False,
        )
    return HTML


@pytest.fixture(scope="module")
def base_url(site: Path):
    """The built book served on 127.0.0.1 at a free port, in a background thread."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium`", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # launch() gives the browser a fresh temporary profile (user-data-dir)
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def visit(browser, base_url):
    """visit(page) -> Visit: load a page once (cached), offline, and record what it did."""
    cache: dict[str, Visit] = {}

    def load(doc: str) -> Visit:
        if doc not in cache:
            cache[doc] = _visit(browser, base_url, doc)
        return cache[doc]

    return load


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme not in ("http", "https", "ws", "wss") or parts.hostname in LOCAL_HOSTS


def _visit(browser, base_url: str, doc: str) -> Visit:
    v = Visit(page=doc)
    recording = True
    context = browser.new_context(service_workers="block")
    page = context.new_page()
    page.set_default_timeout(60_000)

    def route(r):
        if _is_local(r.request.url):
            r.continue_()
        else:
            if recording:
                v.external.append(f"{r.request.method} {r.request.url}")
            r.abort("internetdisconnected")

    def on_response(resp):
        if recording and _is_local(resp.url) and resp.status >= 400:
            v.local_failures.append(f"HTTP {resp.status} {resp.url}")

    def on_failed(req):
        if recording and _is_local(req.url):
            v.local_failures.append(f"failed {req.url}: {req.failure}")

    page.route("**/*", route)
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    page.on("pageerror", lambda exc: v.js_errors.append(str(exc)))
    try:
        response = page.goto(base_url + doc + ".html", wait_until="load")
        v.status = response.status if response else None
        if doc == "index":  # a redirect to the root page (meta refresh)
            page.wait_for_url(lambda url: not url.endswith("/index.html"))
            page.wait_for_load_state("load")
        v.mathjax = page.evaluate(MATHJAX_JS)
        v.math_elements = v.mathjax.get("math", 0)
        v.images = page.evaluate(IMAGES_JS)
        page.wait_for_load_state("networkidle")
        v.raw_tex = page.evaluate(RAW_TEX_JS)
        colab = page.evaluate(COLAB_JS)
        v.colab_links, v.launch_button_visible = colab["links"], colab["visible"]
        v.final_url = page.url
    finally:
        recording = False
        context.close()
    return v


# --------------------------------------------------------------------------- tests


def _fail_if(problems: list[str], what: str) -> None:
    """Fail with a readable list (pytest's assert rewriting would print the whole Visit)."""
    if problems:
        pytest.fail(what + ":\n  " + "\n  ".join(problems), pytrace=False)


def test_toc_lists_chapters_and_exercises():
    """The parametrized tests below would be skipped, not failed, with no pages to check."""
    assert CHAPTERS, f"{TOC.name} lists no chapter under notebooks/"
    assert EXERCISES, f"{TOC.name} lists no exercise under exercises/"
    for doc in DOCS:
        source_of(doc)


@pytest.mark.parametrize("doc", ALL_PAGES)
def test_page_loads_offline(visit, doc):
    v = visit(doc)
    _fail_if([] if v.status == 200 else [f"HTTP {v.status}"], f"{doc}.html did not load (is it in _build/html?)")
    _fail_if(v.local_failures, f"{doc}: the book's own files failed to load")
    _fail_if(v.external, f"{doc}: the page tried to reach the network (aborted here; offline it would fail)")
    _fail_if(v.js_errors, f"{doc}: JavaScript errors")


@pytest.mark.parametrize("doc", ALL_PAGES)
def test_math_typeset(visit, doc):
    v = visit(doc)
    mj = v.mathjax
    problems = []
    if doc in NOTEBOOK_PAGES and not v.math_elements:
        problems.append("no math on the page (a chapter or exercise is expected to have some)")
    if v.math_elements:
        if not mj.get("loaded"):
            problems.append(f"{v.math_elements} math elements, but MathJax did not load")
        elif urlsplit(mj["src"]).hostname not in LOCAL_HOSTS:
            problems.append(f"MathJax comes from {mj['src']}, not from the book")
        elif not mj["containers"]:
            problems.append("MathJax ran but typeset nothing (no mjx-container)")
        problems += [f"math not typeset: {t!r}" for t in mj.get("untypeset", [])]
        problems += [f"TeX error (an undefined macro? see book/notation.md): {e}" for e in mj.get("errors", [])]
    problems += [f"TeX left untypeset in the text: {t!r}" for t in v.raw_tex]
    _fail_if(problems, f"{doc}: math")


@pytest.mark.parametrize("doc", ALL_PAGES)
def test_images_load(visit, doc):
    v = visit(doc)
    broken = [i["src"] for i in v.images if not (i["complete"] and i["naturalWidth"] > 0)]
    _fail_if(broken, f"{doc}: images that did not load")
    if doc in CHAPTERS and not any(i["inArticle"] for i in v.images):
        pytest.fail(f"{doc}: a chapter with no figure (was the notebook executed?)", pytrace=False)


@pytest.mark.parametrize("doc", NOTEBOOK_PAGES)
def test_colab_link(visit, doc):
    v = visit(doc)
    expected = colab_url(source_of(doc))
    assert v.colab_links, f"{doc}: no Open-in-Colab link"
    assert set(v.colab_links) == {expected}, f"{doc}: Colab link {v.colab_links}, expected {expected}"
    assert v.launch_button_visible, f"{doc}: the launch (rocket) button is not visible"


def test_bibliography_lists_references(visit):
    v = visit(BIBLIOGRAPHY)
    _fail_if(v.local_failures + v.external, f"{BIBLIOGRAPHY}: failed or non-local requests")
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    n_entries = sum(1 for line in bib.splitlines() if line.startswith("@"))
    html = (HTML / (BIBLIOGRAPHY + ".html")).read_text(encoding="utf-8")
    n_shown = html.count('role="doc-biblioentry"')
    assert n_shown >= n_entries, f"the bibliography shows {n_shown} of the {n_entries} entries of references.bib"


def test_book_build_executed_nothing():
    """The build reads every chapter from the execution cache that nbexec or the notebook
    tests filled, so each notebook runs once per `make test` / `make book`."""
    log_path = ROOT / "_build" / "book-build.log"
    assert log_path.is_file(), f"{log_path} is missing: build with `make book` or `make test`"
    log = log_path.read_text(encoding="utf-8", errors="replace")
    executed = [ln for ln in log.splitlines() if "Executing notebook" in ln]
    assert not executed, "the book build executed a notebook (a cache miss):\n" + "\n".join(executed)
