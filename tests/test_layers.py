"""The architecture, checked: every import in the package points DOWN the layer order (or stays in
its own layer), so there is no upward arrow and no cycle between layers (docs/DESIGN.md, "Layers")."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tbjax"
# lowest first; a module may import its own layer and any layer before it
LAYERS = [
    # the package root runs first on every `import tbjax.<anything>`, so it sits in the lowest layer
    ("tbjax.errors", "tbjax.config", "tbjax.config_rules", "tbjax.atomic", "tbjax.xla_flags", "tbjax.settings_tree",
     "tbjax"),
    ("tbjax.data",),
    ("tbjax.env",),
    ("tbjax.agent",),
    ("tbjax.learner",),
    ("tbjax.evaluation",),
    ("tbjax.run",),
    ("tbjax.hpo", "tbjax.walkforward"),  # the drivers beside each other, on the run layer
    ("tbjax.cli", "tbjax.api"),
]
MAX_MODULE_LINES = 400


def layer_of(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or (p != "tbjax" and module.startswith(p + ".")) for p in prefixes):
            return i
    return None  # the `python -m tbjax.<command>` shims (tbjax/train.py, hpo/__main__.py, ...) sit above every layer


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lazy_attribute_hook(tree: ast.Module) -> set[ast.AST]:
    """Nodes inside a module-level ``__getattr__`` (PEP 562): they run when a caller asks for that
    attribute (``tbjax.load_policy``), never on import, so they may reach up (the package root's only
    upward arrow; ``import tbjax`` itself stays free of JAX)."""
    return {n for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__" for n in ast.walk(f)}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, function-level ones included (except
    a module-level ``__getattr__`` hook's)."""
    out = []
    tree = ast.parse(path.read_text())
    lazy = lazy_attribute_hook(tree)
    for node in ast.walk(tree):
        if node in lazy:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            out += [(node.lineno, n if layer_of(n) is not None else node.module) for n in names]
    return [(line, m) for line, m in out if m == "tbjax" or m.startswith("tbjax.")]


def test_every_module_belongs_to_a_layer():
    stray = [module_name(p) for p in PACKAGE.rglob("*.py")
             if layer_of(module_name(p)) is None and p.parent != PACKAGE and p.name != "__main__.py"]
    assert not stray, f"modules outside every layer: {stray}"


def test_imports_only_point_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = layer_of(module_name(path))
        if here is None or path.name == "__main__.py":  # `python -m` shims sit above every layer
            continue
        for line, target in imports_of(path):
            there = layer_of(target)
            if there is not None and there > here:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports pointing up the layer order:\n" + "\n".join(upward)


def test_no_module_over_the_size_limit():
    big = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_nothing_points_outside_the_repository():
    """Docstrings, docs and reports cite docs/DESIGN.md and docs/ALGORITHMS.md, never a path of a machine."""
    root = PACKAGE.parent
    texts = [*PACKAGE.rglob("*.py"), *(root / "docs").glob("*.md"), root / "README.md", *(root / "configs").glob("*")]
    bad = [f"{p.relative_to(root)}:{i}" for p in texts for i, line in enumerate(p.read_text().splitlines(), 1)
           if "/work/" in line or "../shared" in line or "shared/DESIGN" in line or "shared/ALGORITHMS" in line]
    assert not bad, f"references outside the repository: {bad}"
    for cited in ("docs/DESIGN.md", "docs/ALGORITHMS.md"):
        assert (root / cited).is_file()


def test_no_function_body_over_sixty_lines():
    """Functions stay readable: at most 60 lines of code each (the docstring does not count)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                lines = node.end_lineno - body[0].lineno + 1 if body else 0
                if lines > 60:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over 60 lines: {long}"


def test_importing_a_low_layer_runs_nothing_above_it():
    """``import tbjax.data`` runs the package root first: it must load no module above layer 1 (the
    XLA workaround lives in layer 0, tbjax/xla_flags.py, for that reason), checked in a fresh
    interpreter so no other test's imports count."""
    code = "import sys, tbjax.data; print(' '.join(m for m in sys.modules if m == 'tbjax' or m.startswith('tbjax.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout.split()
    assert "tbjax.data" in out and "tbjax.xla_flags" in out
    above = [m for m in out if layer_of(m) is None or layer_of(m) > 1]
    assert not above, f"importing tbjax.data loaded modules of higher layers: {above}"
