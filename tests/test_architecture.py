"""The package's shape: layers import only downward (the order docs/architecture.md writes), no module imports another
that imports it back, and every module says its job in its first line and stays short."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "unitune"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 320  # "at most ~300 lines"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def unitune_imports(name: str, path: Path):
    """(module, name or None) for every import of a unitune module in ``name``, anywhere in it (a function-level
    import is an import too); relative imports resolved."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            yield from dynamic_import(name, node)
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names if alias.name.split(".")[0] == "unitune")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] == "unitune":
                yield from ((base, alias.name) for alias in node.names)


def dynamic_import(name: str, call: ast.Call):
    """``importlib.import_module("unitune.x.{name}")`` (or ``f"{__name__}.{name}"``) counts as an import of the
    package its fixed part names: a table that looked modules up by name would otherwise hide an upward import."""
    if not call.args:
        return
    arg = call.args[0]
    parts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
    text = ""
    for part in parts:
        if isinstance(part, ast.Constant):
            text += str(part.value)
        elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) \
                and part.value.id == "__name__" and not text:
            text += name
        else:
            break
    target = text.rstrip(".")
    if target.split(".")[0] == "unitune":
        yield target, None


def imports(name: str, path: Path) -> set[str]:
    """The unitune modules ``name`` imports."""
    targets = {f"{base}.{item}" if f"{base}.{item}" in MODULES else base for base, item in unitune_imports(name, path)}
    return {t for t in targets if t in MODULES and t != name}


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def layers() -> list[tuple[str, list[str]]]:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    block = text[text.index("<!-- layers"): text.index("<!-- end of layers -->")]
    return [(m.group(1), re.findall(r"`([\w.]+)`", m.group(2)))
            for m in re.finditer(r"^\d+\. \*\*(\w+)\*\*: (.+)$", block, re.M)]


def layer_of(name: str, order: list[tuple[str, list[str]]]) -> int:
    """The layer of the longest listed prefix of ``name`` (``unitune.fast.kv_head`` is in ``fast``)."""
    best = None
    for rank, (_, prefixes) in enumerate(order):
        for prefix in prefixes:
            full = f"unitune.{prefix}"
            if (name == full or name.startswith(full + ".")) and (best is None or len(full) > best[1]):
                best = (rank, len(full))
    if best is None:
        raise AssertionError(f"{name} is in no layer of {ARCHITECTURE.name}: add it to the list")
    return best[0]


def test_the_documented_layers_cover_every_module():
    order = layers()
    assert len(order) >= 5
    for name in MODULES:
        if name != "unitune":
            layer_of(name, order)


def test_no_import_reaches_a_higher_layer():
    order = layers()
    upward = []
    for name, targets in GRAPH.items():
        if name == "unitune":
            continue
        here = layer_of(name, order)
        upward += [f"{name} ({order[here][0]}) imports {t} ({order[layer_of(t, order)][0]})"
                   for t in sorted(targets) if layer_of(t, order) > here]
    assert not upward, "\n".join(upward)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_import_names_a_module_and_a_name_that_exist():
    """A moved module or function leaves no import behind that only fails when its line runs (a function-level
    import in an error path, say)."""
    broken = []
    for name, path in MODULES.items():
        for base, item in unitune_imports(name, path):
            if base not in MODULES:
                broken.append(f"{name} imports {base}, which does not exist")
            elif item is not None and f"{base}.{item}" not in MODULES and item != "*" \
                    and item not in top_level_names(MODULES[base]):
                broken.append(f"{name} imports {item} from {base}, which has no such name")
    assert not broken, "\n".join(broken)


def test_no_import_circles():
    assert cycles(GRAPH) == []


def test_a_module_looked_up_by_name_is_an_import():
    call = ast.parse('importlib.import_module(f"unitune.train.methods.{method}")').body[0].value
    assert list(dynamic_import("unitune.methods", call)) == [("unitune.train.methods", None)]
    call = ast.parse('importlib.import_module(f"{__name__}.{method}")').body[0].value
    assert list(dynamic_import("unitune.train.methods", call)) == [("unitune.train.methods", None)]
    assert "unitune.train.methods" in GRAPH["unitune.train.run"]


def test_the_circle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_its_job_and_stays_short(name):
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree)
    if name.endswith("__main__"):
        return
    assert doc and len(doc.splitlines()[0]) > 20, f"{path} needs a docstring whose first line says its job"
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES, f"{path} is over {MAX_LINES} lines"
