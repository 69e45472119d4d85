"""The layout promises of the README: no import circles (function-level imports included), no file
past 400 lines, and a file map that matches the tree."""
import ast
import re

from tests.conftest import ROOT

def project_files() -> dict[str, object]:
    """module name -> path, for the root's Python files and its packages' (tests/ aside). Only
    folders with an __init__.py count, so a virtualenv or a run folder inside the clone does not."""
    paths = list(ROOT.glob("*.py"))
    for folder in sorted(ROOT.iterdir()):
        if folder.name != "tests" and (folder / "__init__.py").is_file():
            paths += folder.rglob("*.py")
    out = {}
    for path in sorted(paths):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path, modules: set[str]) -> set[str]:
    """The project modules a file imports anywhere in it (top level and inside functions).

    An import names the deepest project module it reaches: `from tasks import grader` is an edge
    to tasks.grader, `from tasks import DataError` one to tasks. The project imports absolutely
    (a relative import would hide an edge from this graph, so it fails here)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use an absolute import"
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:  # the deepest project module the name reaches, if any
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    graph = {}
    for name, path in files.items():
        graph[name] = imports(path, set(files)) - {name}
    return graph


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circles_function_level_imports_included():
    graph = import_graph()
    assert len(graph) > 20 and "eval" in graph["train"] and "tasks.workspace" in graph["rollout"]  # it sees lazy imports
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_no_python_file_is_over_400_lines():
    files = [*project_files().values(), *(ROOT / "tests").glob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_readme_file_map_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The files", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w./-]+(?:\.py|/))`", section))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"the file map names paths that do not exist: {missing}"
    unlisted = []
    for path in project_files().values():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        docstring_only = len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
        if rel not in named and not (path.name == "__init__.py" and docstring_only):
            unlisted.append(rel)
    assert not unlisted, f"Python files missing from the README's file map: {unlisted}"
    root_files = [p.name for p in ROOT.glob("*.py")]
    assert len(root_files) <= 14, root_files  # the root holds the method; every other job has a folder
