"""The shape of the code, checked: imports point one way (no two modules import each other, directly or
round a circle, at module level or inside functions), the networks import nothing of fom outside models/,
and no argparse namespace travels below commands/."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fom_cli"


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, modules):
    """The fom_cli modules `path` imports anywhere in it (`from fom_cli.x import y` counts fom_cli.x.y when
    that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fom_cli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fom_cli"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in modules)
    return {name for name in found if name in modules}


def import_graph():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) for name, path in paths.items()}


def test_no_two_modules_import_each_other_even_round_a_circle():
    graph = import_graph()
    # A package's __init__ is imported with any of its modules: edges into a package from inside it are
    # not a circle of the code's own making.
    def edges(name):
        return {other for other in graph[name] if other != name and not name.startswith(other + ".")}

    circles, state = [], {}

    def visit(name, path):
        state[name] = "open"
        for other in sorted(edges(name)):
            if state.get(other) == "open":
                circles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, path + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == [], " ; ".join(" -> ".join(circle) for circle in circles)


def test_the_networks_import_nothing_of_fom_outside_models():
    graph = import_graph()
    outside = {name: sorted(other for other in imports if not other.startswith("fom_cli.models"))
               for name, imports in graph.items() if name.startswith("fom_cli.models")}
    assert {name: imports for name, imports in outside.items() if imports} == {}


def test_no_argparse_namespace_below_the_commands():
    readers = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("commands/") or relative == "cli.py":
            continue
        readers += [f"{relative}:{number}" for number, line in enumerate(path.read_text().splitlines(), 1)
                    if re.search(r"\bargs\.\w", line) or "argparse.Namespace" in line]
    assert readers == []
