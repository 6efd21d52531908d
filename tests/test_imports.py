"""The house has floors: course_lib's modules import only modules below them, never in a cycle.

The graph is read from the source (the ``ast`` of every module), so a lazy import inside a
function counts as much as one at the top: hiding a cycle behind a function-level import does not
make it go away. ``from course_lib.x import y`` and ``import course_lib.x`` both count, as does
``from course_lib import x`` (the submodule x).
"""

from __future__ import annotations

import ast

from helpers import ROOT

PACKAGE = ROOT / "course_lib"


def module_name(path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path, modules: set[str]) -> set[str]:
    """The course_lib modules that ``path`` imports anywhere in its body."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:      # course_lib.x.y → course_lib.x if y is a name
                name = name.rpartition(".")[0]
            if name and name != "course_lib":
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imports_of(p, modules) for p in paths}
    for name, deps in graph.items():     # a package's __init__ importing its own submodules is not a cycle
        deps.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}           # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_is_read_from_lazy_imports_too(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from course_lib.model import DecoderLM\n    import course_lib.kv_cache\n")
    assert imports_of(f, {"course_lib.model", "course_lib.kv_cache"}) == {"course_lib.model", "course_lib.kv_cache"}


def test_course_lib_has_no_import_cycle():
    graph = import_graph()
    assert "course_lib.model" in graph and graph["course_lib.model"], "the graph was not read"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_layers_sit_below_the_model_and_users_above():
    """The model imports its parts; the parts never import the model or what uses it."""
    graph = import_graph()
    above_model = {"course_lib.model", "course_lib.generation", "course_lib.train", "course_lib.architectures"}
    for part in ("attention", "masks", "ffn", "moe", "norms", "positional", "kv_cache", "utils"):
        reached = _reachable(graph, f"course_lib.{part}")
        assert not reached & above_model, f"course_lib.{part} reaches up to {sorted(reached & above_model)}"
    assert "course_lib.model" not in _reachable(graph, "course_lib.kv_cache")
    assert {"course_lib.model", "course_lib.kv_cache"} <= graph["course_lib.generation"]


def _reachable(graph, start) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen
