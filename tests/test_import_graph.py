"""The modules of ddpm_jax import only modules below them: the import graph has no cycle.

Every ``import`` / ``from ... import`` in ddpm_jax/**.py counts, at module level or inside a
function (a deferred import still ties the two modules together).
"""

import ast
import graphlib
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "ddpm_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the ddpm_jax modules it imports}, over every .py file of the package."""
    files = {_module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .a import b
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import mod` needs the submodule pkg.mod (pkg/__init__ may still be
                # initialising); `from pkg import name` needs pkg/__init__ itself.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in node.names]
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def test_import_graph_finds_imports():
    graph = import_graph()
    assert "ddpm_jax.models" in graph["ddpm_jax.generate"]
    assert "ddpm_jax.pretrained.tensor_layout" in graph["ddpm_jax.pretrained.param_files"]


def test_ddpm_jax_has_no_import_cycle():
    """A package imports its own modules from its __init__; a module importing its package's
    __init__ back (``from ddpm_jax.pretrained import x`` inside ddpm_jax/pretrained/) would close
    a circle and is reported too."""
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None
    assert "ddpm_jax.generate" in order
