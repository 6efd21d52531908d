"""Execute notebooks once, in parallel, into the book's execution cache.

``python -m tools.nbexec [--jobs N] [--force] [--times FILE] NOTEBOOK...``

Each notebook runs in its own directory with a fresh kernel, exactly as myst-nb runs it
(``jupyter_cache``'s ``single_nb_execution``), and a successful run is stored in the
jupyter-cache that ``jupyter-book build`` reads (``_build/.jupyter_cache``). The book build
then finds every notebook cached and executes nothing; a failed run prints the traceback
and makes the command exit 1.

Without ``--force`` a notebook whose code is already cached is skipped (what ``make book``
wants); with ``--force`` it is executed again (what ``make test`` wants: the library may
have changed under an unchanged notebook). ``--inplace`` writes the outputs back into the
notebook instead (used to refresh the stored outputs of ``solutions/``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat

from tools.project import ROOT, book_config

DEFAULT_TIMEOUT = 120


def cache_path() -> Path:
    configured = (book_config().get("execute") or {}).get("cache") or ""
    return (ROOT / configured) if configured else ROOT / "_build" / ".jupyter_cache"


@contextmanager
def _locked(path: Path):
    """Serialise writes to the cache's SQLite database across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".course_lib.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Result:
    path: str
    seconds: float
    error: str | None = None
    skipped: bool = False


def is_cached(path: Path) -> bool:
    from jupyter_cache import get_cache

    nb = nbformat.read(path, as_version=4)
    with _locked(cache_path()):
        try:
            get_cache(str(cache_path())).match_cache_notebook(nb)
            return True
        except KeyError:
            return False


def execute(path: Path, timeout: int = DEFAULT_TIMEOUT) -> tuple[nbformat.NotebookNode, float, str | None]:
    """Run ``path`` top to bottom in its own directory; return (notebook, seconds, error)."""
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.read(path, as_version=4)
    result = single_nb_execution(nb, cwd=str(path.parent.resolve()), timeout=timeout,
                                 allow_errors=False, meta_override=True)
    err = None if result.err is None else (result.exc_string or repr(result.err))
    return nb, result.time, err


def run_one(path: str, force: bool, inplace: bool, timeout: int) -> Result:
    p = Path(path)
    if not inplace and not force and is_cached(p):
        return Result(path, 0.0, skipped=True)
    nb, seconds, err = execute(p, timeout)
    # Widget state would make the book load the widget JavaScript from a CDN: the book shows
    # a static figure beside each widget instead.
    nb.metadata.pop("widgets", None)
    if err is None:
        if inplace:
            nbformat.write(nb, p)
        else:
            from jupyter_cache import get_cache
            from jupyter_cache.base import CacheBundleIn

            with _locked(cache_path()):
                get_cache(str(cache_path())).cache_notebook_bundle(
                    CacheBundleIn(nb, str(p.resolve()), data={"execution_seconds": seconds}),
                    check_validity=False, overwrite=True,
                )
    return Result(path, seconds, err)


def run_many(paths: list[str], *, jobs: int = 2, force: bool = False, inplace: bool = False,
             timeout: int = DEFAULT_TIMEOUT) -> list[Result]:
    if jobs <= 1 or len(paths) <= 1:
        return [run_one(p, force, inplace, timeout) for p in paths]
    # Kernels running side by side share the cores: torch's default of one thread per core in
    # every kernel oversubscribes them, and thousands of small ops then run several times slower.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, p, force, inplace, timeout) for p in paths]
        return [f.result() for f in futures]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="execute even when cached")
    ap.add_argument("--inplace", action="store_true", help="write outputs back into the notebooks")
    ap.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per cell")
    ap.add_argument("--times", type=Path, help="write {notebook: seconds} as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = run_many(args.notebooks, jobs=args.jobs, force=args.force, inplace=args.inplace,
                       timeout=args.timeout)
    for r in results:
        state = "cached" if r.skipped else ("FAILED" if r.error else "ok")
        print(f"{r.path:<40} {state:>7} {r.seconds:7.1f} s", flush=True)
        if r.error:
            print(r.error, file=sys.stderr)
    print(f"executed {sum(not r.skipped for r in results)} notebook(s) in {time.perf_counter() - t0:.1f} s wall")
    if args.times:
        args.times.write_text(json.dumps({r.path: round(r.seconds, 2) for r in results if not r.skipped}, indent=2))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
