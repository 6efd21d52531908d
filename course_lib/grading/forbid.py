"""Checks that an answer computes what its task asks instead of calling the reference it is compared with.

A task such as "write LayerNorm from its formula" or "derive the backward pass" scores nothing if
the answer calls ``F.layer_norm`` or autograd: the numbers are right, the point is missed. A check
calls the student's function through :func:`call_without`, which

* fails at once when the function refers, by a global name, to one of the forbidden functions
  (``from course_lib.sparse import reachable`` at the top of the answer cell), and
* makes the forbidden functions raise while the function runs (``F.layer_norm(...)``,
  ``torch.autograd.grad(...)``, an import inside the function).
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Callable, Iterable

from course_lib.grading import call_student

__all__ = ["Refused", "autograd", "AUTOGRAD_MESSAGE", "call_without", "call_without_library", "call_allowing_library",
           "library_message", "refusing", "refers_to"]


class Refused(BaseException):
    """Raised by a forbidden function inside :func:`refusing`. A ``BaseException``, so that an answer's
    ``except Exception`` cannot swallow it and carry on with a fallback."""


def autograd() -> list[tuple[object, str]]:
    """Every entry point of autograd, for tasks that ask for a gradient derived by hand: ``torch.autograd.grad``
    (behind ``torch.func.grad``, ``vjp``, ``jacrev`` and ``autograd.functional``), ``torch.autograd.backward`` and
    ``Tensor.backward``, forward-mode ``make_dual`` (behind ``jacfwd``, ``jvp``), and the wrappers themselves."""
    import torch
    import torch.autograd.forward_ad as forward_ad
    import torch.autograd.functional  # noqa: F401  (an attribute of torch.autograd once imported)
    import torch.func

    return [(torch.autograd, "grad"), (torch.autograd, "backward"), (torch.Tensor, "backward"),
            (forward_ad, "make_dual"), (torch.autograd.functional, "vjp"), (torch.autograd.functional, "jacobian"),
            (torch.func, "vjp"), (torch.func, "grad"), (torch.func, "jacrev"), (torch.func, "jacfwd")]


AUTOGRAD_MESSAGE = ("autograd does the work here: derive the gradient and compute it with tensor operations "
                    "(autograd is what the check compares you with)")


_INHERITED = object()


@contextlib.contextmanager
def refusing(targets: Iterable[tuple[object, str]], message: str):
    """Make every ``getattr(obj, attr)`` of ``targets`` raise ``message`` inside the block; restore them after."""
    def refuse(*args, **kwargs):
        raise Refused(message)
    # a class keeps its own entry as it was (a staticmethod stays one); an inherited method is deleted again
    saved = [(obj, attr, vars(obj).get(attr, _INHERITED) if isinstance(obj, type) else getattr(obj, attr))
             for obj, attr in targets if hasattr(obj, attr)]
    try:
        for obj, attr, _ in saved:
            setattr(obj, attr, refuse)
        yield
    finally:
        for obj, attr, fn in reversed(saved):
            if fn is _INHERITED:
                delattr(obj, attr)
            else:
                setattr(obj, attr, fn)


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def refers_to(fn: Callable, objects: Iterable[object]) -> str | None:
    """The global name through which ``fn`` reaches one of ``objects``, or None.

    Follows the functions of the student's own module that ``fn`` calls by name (helpers defined in
    other cells of the notebook), and the functions nested in them.
    """
    ids = {id(o) for o in objects}
    if id(fn) in ids:
        return getattr(fn, "__name__", "a library function")
    home = getattr(fn, "__module__", None)
    seen: set[int] = set()
    todo = [fn]
    while todo:
        f = todo.pop()
        code, scope = getattr(f, "__code__", None), getattr(f, "__globals__", None)
        if code is None or scope is None or id(f) in seen:
            continue
        seen.add(id(f))
        for name in sorted(_names(code)):
            if name not in scope:
                continue
            obj = scope[name]
            if id(obj) in ids:
                return name
            if isinstance(obj, types.FunctionType) and obj.__module__ == home:
                todo.append(obj)                      # the student's own helper: look inside it too
    return None


def call_without(fn: Callable, targets: Iterable[tuple[object, str]], message: str, *args, name: str, **kwargs):
    """``call_student(fn, *args)`` with the functions ``targets`` forbidden (see the module's docstring)."""
    targets = [(obj, attr) for obj, attr in targets if hasattr(obj, attr)]
    used = refers_to(fn, [getattr(obj, attr) for obj, attr in targets])
    if used is not None:
        raise AssertionError(f"{name}: your function calls `{used}`: {message}")
    try:
        with refusing(targets, message):
            return call_student(fn, *args, name=name, **kwargs)
    except Refused:
        raise AssertionError(f"{name}: {message}") from None



def _dotted(obj: object, attr: str) -> str:
    """``module.function`` or ``module.Class.method``: how the answer would reach ``getattr(obj, attr)``."""
    if isinstance(obj, types.ModuleType):
        return f"{obj.__name__}.{attr}"
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}.{attr}"


def library_message(targets: Iterable[tuple[object, str]]) -> str:
    """The message for an answer that calls ``targets``, the library functions its check compares with."""
    names = ", ".join(dict.fromkeys(_dotted(obj, attr) for obj, attr in targets))
    return (f"the library ({names}) does the work here: write it yourself "
            "(the library is what the check compares you with)")


def _with_aliases(targets: list[tuple[object, str]]) -> list[tuple[object, str]]:
    """``targets`` and every other name under which a course_lib module holds the same objects.

    ``course_lib.kv_cache`` re-exports ``course_lib.attention.repeat_kv``, ``course_lib.model`` imports
    it: an answer that reaches it through any of them (``import course_lib.model as m`` inside the
    function) must meet the refusal too.
    """
    forbidden = {id(getattr(obj, attr)) for obj, attr in targets if hasattr(obj, attr)}
    out, seen = list(targets), {(id(obj), attr) for obj, attr in targets}
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", None)
        if not (isinstance(module, types.ModuleType) and isinstance(name, str)
                and (name == "course_lib" or name.startswith("course_lib."))):
            continue
        for attr, value in list(vars(module).items()):
            if id(value) in forbidden and (id(module), attr) not in seen:
                out.append((module, attr))
                seen.add((id(module), attr))
    return out


def call_without_library(fn: Callable, targets: Iterable[tuple[object, str]], *args, name: str, **kwargs):
    """``call_student(fn, *args)`` with the library functions ``targets`` forbidden (:func:`call_without`),
    under every name course_lib holds them by, and the message :func:`library_message` if the answer uses one."""
    targets = list(targets)
    return call_without(fn, _with_aliases(targets), library_message(targets), *args, name=name, **kwargs)


def call_allowing_library(fn: Callable, targets: Iterable[tuple[object, str]], *args, name: str, **kwargs):
    """:func:`call_without_library` without the refusal: what a check would do without it. The tests put
    it in a check's place to show that a library answer fails only because it is refused."""
    return call_student(fn, *args, name=name, **kwargs)
