"""The layers, one direction: stego (the method) <- baselines <- benchmarks <- reports. Built from the source
(every import statement, also inside functions): no module imports a layer above its own (stego/cli.py, the
one composition root, excepted), no import cycle inside the suite, and no module or line longer than the house
limits."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("stego", "baselines", "benchmarks", "reports")
COMPOSITION_ROOT = "stego.cli"
MAX_LINES = 450
MAX_WIDTH = 120


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """The suite's modules by dotted name (test modules and conftest aside: they are not a layer)."""
    found = {}
    for layer in LAYERS:
        for path in sorted((REPO / layer).rglob("*.py")):
            if path.name.startswith("test_") or path.name == "conftest.py":
                continue
            found[_module_name(path)] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The suite's modules that module `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            children = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            bases, children = [base], [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for child in children:
            if child in known:
                targets.add(child)
        for base in bases:
            while base and base not in known:
                base = base.rpartition(".")[0]
            if base and not any(c in known and c.startswith(base + ".") for c in children if c in targets):
                targets.add(base)
    targets.discard(name)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> int:
    return LAYERS.index(name.split(".")[0])


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{a} -> {b}" for a, targets in graph().items() if a != COMPOSITION_ROOT
              for b in sorted(targets) if layer(b) > layer(a)]
    assert not upward, "imports against the layers: " + "; ".join(upward)


def _cycles(edges: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a cycle of imports."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    edges = {a: {b for b in targets if b != COMPOSITION_ROOT} for a, targets in graph().items()
             if a != COMPOSITION_ROOT}
    cycles = _cycles(edges)
    named = ["; ".join(f"{a} -> {b}" for a in cycle for b in sorted(edges[a]) if b in cycle) for cycle in cycles]
    assert not cycles, "import cycles: " + " | ".join(named)


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path):
    """The detectors themselves: a planted back edge and a planted cycle are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    known = {"stego.x": tmp_path / "x.py", "reports.y": tmp_path / "y.py", "stego.z": tmp_path / "z.py"}
    known["stego.x"].write_text("def f():\n    from reports.y import g\n    from . import z\n")
    assert imports("stego.x", known["stego.x"], known) == {"reports.y", "stego.z"}
    assert layer("reports.y") > layer("stego.x")


def test_no_module_is_too_long():
    files = [p for layer in (*LAYERS, "tests") for p in (REPO / layer).rglob("*.py")]
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


def test_no_line_is_too_long():
    files = [p for layer in (*LAYERS, "tests") for p in (REPO / layer).rglob("*.py")]
    long = [f"{p.relative_to(REPO)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > MAX_WIDTH]
    assert not long, f"lines over {MAX_WIDTH} characters: {long}"
