"""course_lib.grading.forbid: an answer that calls the library it is compared with scores nothing."""

import inspect

import pytest
import torch

import course_lib.attention
import course_lib.kv_cache
import course_lib.model
from course_lib import flash
from course_lib.grading.forbid import Refused, call_without, call_without_library, library_message, refusing
from course_lib.kv_cache import repeat_kv          # a re-export: course_lib.attention's function under another module

REPEAT_KV = [(course_lib.attention, "repeat_kv")]


def test_the_message_names_each_function_once():
    message = library_message([(course_lib.attention, "repeat_kv"), (course_lib.model.CausalSelfAttention, "forward"),
                               (course_lib.attention, "repeat_kv")])
    assert message.startswith("the library (course_lib.attention.repeat_kv, "
                              "course_lib.model.CausalSelfAttention.forward) does the work here")


def test_an_answer_by_its_own_hand_passes_and_gets_its_value():
    x = torch.randn(1, 2, 3, 4)
    got = call_without_library(lambda x, r: torch.repeat_interleave(x, r, dim=1), REPEAT_KV, x, 2, name="repeat_kv")
    assert torch.equal(got, torch.repeat_interleave(x, 2, dim=1))


CALLS = []


def answer_by_library(x, n_rep):
    CALLS.append(1)
    return repeat_kv(x, n_rep)


def test_a_global_name_for_the_library_is_refused_before_the_call():
    """As in a notebook: the import at the top of the cell makes ``repeat_kv`` a global name."""
    CALLS.clear()
    with pytest.raises(AssertionError, match=r"repeat_kv: your function calls `repeat_kv`: the library \("
                                             r"course_lib.attention.repeat_kv\) does the work here"):
        call_without_library(answer_by_library, REPEAT_KV, torch.randn(1, 2, 3, 4), 2, name="repeat_kv")
    assert CALLS == []


@pytest.mark.parametrize("module", ["course_lib.attention", "course_lib.kv_cache", "course_lib.model"])
def test_every_course_lib_name_of_a_forbidden_function_refuses_while_the_answer_runs(module):
    def answer(x, n_rep):
        import importlib
        return importlib.import_module(module).repeat_kv(x, n_rep)

    with pytest.raises(AssertionError, match="the library .* does the work here"):
        call_without_library(answer, REPEAT_KV, torch.randn(1, 2, 3, 4), 2, name="repeat_kv")
    assert course_lib.kv_cache.repeat_kv is course_lib.attention.repeat_kv is course_lib.model.repeat_kv


def test_a_class_gets_back_exactly_what_it_had():
    """A staticmethod stays a staticmethod; a method the class inherits is not copied into it."""
    own = inspect.getattr_static(flash.FlashAttentionFunction, "backward")
    with refusing([(flash.FlashAttentionFunction, "backward"), (course_lib.model.CausalSelfAttention, "__call__")],
                  "refused"):
        with pytest.raises(Refused, match="refused"):
            flash.FlashAttentionFunction.backward(None, None)
    assert inspect.getattr_static(flash.FlashAttentionFunction, "backward") is own
    assert isinstance(own, staticmethod)
    assert "__call__" not in vars(course_lib.model.CausalSelfAttention)


def test_an_answer_cannot_swallow_the_refusal():
    """A refusal is a BaseException: an answer's ``except Exception`` fallback does not hide it."""
    import torch

    def sneaky(x):
        try:
            return torch.softmax(x, -1)
        except Exception:
            return torch.zeros_like(x)

    with pytest.raises(AssertionError, match="sneaky: no softmax"):
        call_without(sneaky, [(torch, "softmax")], "no softmax", torch.ones(3), name="sneaky")
