"""The package layering the README's Layout section promises, checked on the source: every import
of the product (module level and inside functions) is mapped to its layer node, and the graph of
nodes must have no cycle, the bottom layer ``jobs.core`` must import nothing else of faceops, and
``images`` must not import the jobs orchestration above it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "images", "train", "inference")


def node_of(module: str) -> str | None:
    """The layer node of a dotted module name; None for anything outside faceops."""
    if module == "jobs.core" or module.startswith("jobs.core."):
        return "jobs.core"
    top = module.split(".")[0]
    return top if top in (*PACKAGES, "cli") else None


def product_files() -> list[Path]:
    """cli.py, every .py file of the packages, and the Python scripts in images/bin."""
    files = [ROOT / "cli.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    files += [path for path in sorted((ROOT / "images" / "bin").iterdir())
              if path.is_file() and "python" in path.read_text(errors="replace").split("\n", 1)[0]]
    return files


def module_of(path: Path) -> str:
    """The dotted module name of a product file (a script in images/bin counts as part of images)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[:2] == ("images", "bin"):
        return "images.bin"
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, package: str) -> list[tuple[str, int]]:
    """Every module ``source`` imports, anywhere in it (functions too), as absolute dotted names
    with their lines; ``package`` resolves relative imports. ``from a import b`` counts as
    importing ``a.b``, so ``from jobs import core`` is the bottom layer, not jobs orchestration."""
    return [(name, node.lineno) for node in ast.walk(ast.parse(source)) for name in imported_by(node, package)]


def imported_by(node: ast.AST, package: str) -> list[str]:
    """The absolute dotted names an import statement imports (none for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
        target = ".".join(parts + ([node.module] if node.module else []))
        return [f"{target}.{alias.name}" for alias in node.names]
    return []


def import_graph() -> dict[str, dict[str, list[str]]]:
    """node -> imported node -> the "file:line" places that import it (self-imports left out)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in product_files():
        module = module_of(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        source = node_of(module)
        graph.setdefault(source, {})
        for imported, line in imports_in(path.read_text(), package):
            target, place = node_of(imported), f"{path.relative_to(ROOT)}:{line}"
            if target and target != source and place not in graph[source].get(target, []):
                graph[source].setdefault(target, []).append(place)
    return graph


def find_cycle(graph: dict[str, set[str] | dict]) -> list[str] | None:
    """A cycle of ``graph`` as its path (first node repeated at the end), or None when it has none."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def describe(graph: dict[str, dict[str, list[str]]], cycle: list[str]) -> str:
    """The cycle with, for each edge, where the import is."""
    return "; ".join(f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:]))


def test_cycle_finder_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    cycle = find_cycle({"a": {"b"}, "b": {"c", "d"}, "c": {"e"}, "d": set(), "e": {"b"}})
    assert cycle == ["b", "c", "e", "b"]
    # A node reached twice without a cycle (diamond) is not one.
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


def test_import_collector_sees_function_level_and_relative_imports():
    source = ("import os\nfrom jobs import core\n\n\ndef f():\n    from jobs.backends import cloud\n"
              "    from . import retry\n    from ..spec import load\n")
    assert imports_in(source, "jobs.core") == [("os", 1), ("jobs.core", 2), ("jobs.backends.cloud", 6),
                                               ("jobs.core.retry", 7), ("jobs.spec.load", 8)]
    assert [node_of(m) for m, _ in imports_in(source, "jobs.core")] == [None, "jobs.core", "jobs", "jobs.core", "jobs"]
    assert node_of("cli") == "cli" and node_of("images.bin") == "images" and node_of("jobsx") is None


def test_no_import_cycle_between_packages():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {describe(graph, cycle)}"


def test_bottom_layer_imports_nothing_else_of_faceops():
    imports = import_graph().get("jobs.core", {})
    assert not imports, "jobs.core imports " + "; ".join(f"{node} ({', '.join(places)})" for node, places in imports.items())


def test_images_never_imports_jobs_orchestration():
    places = import_graph().get("images", {}).get("jobs")
    assert not places, f"images imports jobs orchestration at {', '.join(places)}"


def file_graph() -> dict[str, dict[str, list[str]]]:
    """module -> imported module -> the "file:line" places that import it, between the product's
    files (imports inside functions count): ``from a import b`` is an edge to ``a.b`` when that is a
    file of its own, else to ``a``; imports of a module by itself are left out."""
    modules = {module_of(path): path for path in product_files()}
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        graph.setdefault(module, {})
        for imported, line in imports_in(path.read_text(), package):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != module:
                graph[module].setdefault(imported, []).append(f"{path.relative_to(ROOT)}:{line}")
    return graph


def test_file_graph_resolves_names_to_files():
    graph = file_graph()
    assert "jobs.core.errors" in graph["jobs.core.retry"] or "jobs.core.errors" in graph["jobs.core.config"]
    assert "jobs.core.storage" in graph["jobs.store"] or "jobs.core.storage" in graph["jobs.submit"]


def test_no_import_cycle_between_files():
    graph = file_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {describe(graph, cycle)}"


# The faceops imports that stay inside a function, file -> module: each loads MXNet-built code or
# keeps the contract runnable alone in images, and says so on its line.
IN_FUNCTION = {
    ("jobs/core/contract.py", "jobs.core.errors.SpecError"),
    ("train/detection_data.py", "train.data.DetectionDataset"),
    ("train/importer.py", "train.backbones.get_model"),
    ("train/recognition.py", "train.recognition_loop"),
}


def in_function_imports() -> dict[tuple[str, str], str]:
    """(file, faceops module) -> its source line, for every faceops import inside a function."""
    found = {}
    for path in product_files():
        source = path.read_text()
        lines = source.splitlines()
        module = module_of(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for function in ast.walk(ast.parse(source)):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    for name in imported_by(node, package):
                        if node_of(name):
                            found[(path.relative_to(ROOT).as_posix(), name)] = lines[node.lineno - 1]
    return found


def test_faceops_modules_import_each_other_at_the_top():
    found = in_function_imports()
    assert set(found) == IN_FUNCTION, f"faceops imports inside functions: {sorted(set(found) - IN_FUNCTION)}"
    unexplained = [key for key, line in found.items() if "#" not in line]
    assert not unexplained, f"say on the line why these stay inside a function: {unexplained}"
