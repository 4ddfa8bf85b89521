"""The package's structure stays as the README's Layout section describes it:
no import circle among the modules of fastrnn/ and kernels/ (function-level,
lazy imports included), no module over 800 lines, every module opening with
a docstring that says what it owns, and every module named in the Layout
section (and every path named there present).

The modules read are the installed package's (kernels/ is installed as
fastrnn.kernels), so this checks what users get."""
import ast
import re
from pathlib import Path

import pytest

import fastrnn

PKG = Path(fastrnn.__file__).resolve().parent
README = Path(__file__).resolve().parent.parent / "README.md"
MAX_LINES = 800


def _modules():
    """{dotted name: path} of every module of the installed package."""
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name):
    """The module of ``name`` (or of its nearest enclosing package) among ours."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name):
    """The modules of ours that module ``name`` imports anywhere in its text
    (top level, inside functions, under ``if``/``try``)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else _resolve(target))
    found.discard(None)
    found.discard(name)
    return found


def import_circles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_circles(graph) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_lazy_imports_are_seen():
    # fastrnn/__init__.py imports kernels.cpu inside functions only
    assert "fastrnn.kernels.cpu" in imports_of("fastrnn")


def test_no_import_circle():
    graph = {m: imports_of(m) for m in MODULES}
    circles = import_circles(graph)
    detail = "\n".join(" <-> ".join(c) + ": " + "; ".join(
        f"{a} imports {sorted(graph[a] & set(c))}" for a in c) for c in circles)
    assert not circles, "import circles:\n" + detail


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size_and_docstring(name):
    path = MODULES[name]
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines (at most {MAX_LINES}: split it by concern)"
    if path.name == "__main__.py":
        return
    doc = ast.get_docstring(ast.parse(text))
    assert doc and len(doc.split()) >= 4, f"{name} opens with no docstring saying what it owns"


def _layout_section():
    text = README.read_text()
    m = re.search(r"^## Layout\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, "README has no Layout section"
    return m.group(1)


def test_readme_layout_names_every_module():
    section = _layout_section()
    # the README names files by their place in the repository: kernels/ at the top
    repo_paths = set()
    for name, path in MODULES.items():
        rel = path.relative_to(PKG.parent).as_posix()
        if rel.startswith("fastrnn/kernels/"):
            rel = rel[len("fastrnn/"):]
        repo_paths.add(rel)
    named = set(re.findall(r"(?:fastrnn|kernels)/[\w/]*\w+\.py", section))
    # a bare file name after a named folder on the same line counts for that folder
    for line in section.splitlines():
        folder = re.match(r"\s*((?:fastrnn|kernels)/(?:[\w]+/)*)", line)
        if folder:
            for f in re.findall(r"(?<![/\w])(\w+\.py)\b", line):
                named.add(folder.group(1) + f)
    missing = sorted(p for p in repo_paths
                     if p not in named and not p.endswith("__init__.py")
                     and not p.endswith("__main__.py"))
    assert not missing, f"README Layout does not name: {missing}"
    stale = sorted(n for n in named if n not in repo_paths)
    assert not stale, f"README Layout names files that do not exist: {stale}"
