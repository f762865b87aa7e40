"""No stale reference: every file path and dotted name that the README, docs/*.md and the package's
own docstrings and comments cite points at something that exists.

Checked forms: ``tbjax/run/experiment.py`` (also ``tests/...py``, ``benchmarks/...py``); the same path
relative to the package, ``run/experiment.py``, as docs/DESIGN.md writes it; ``tbjax.run.experiment.split_roles``
(module, then attribute, then an attribute of a class); and the DESIGN.md short form
``run/experiment.split_roles``. Names are resolved by reading the source (``ast``), never by importing it:
the test is fast, runs no JAX and cannot be fooled by an import side effect. A name a module only
re-exports (``from x import y``) counts as defined there, as it is importable from there.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tbjax"
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
_SUB = "|".join(SUBPACKAGES)

PATH = re.compile(r"(?<![\w/.-])((?:tbjax|tests|benchmarks)/[\w/]*\w\.py)\b")
PACKAGE_PATH = re.compile(rf"(?<![\w/.-])((?:{_SUB})/[\w/]*\w\.py)\b")
DOTTED = re.compile(r"(?<![\w./-])(tbjax(?:\.\w+)+)")
SHORT = re.compile(rf"(?<![\w/.-])((?:{_SUB})/\w+)\.(\w+(?:\.\w+)*)")
NOT_REFERENCES = {"tbjax.zip"}  # docs/PERFORMANCE.md: the zip of the repository a Colab cell unpacks


def texts() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(PACKAGE.rglob("*.py"))]


@functools.lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _names_in(body, with_self: bool = False) -> dict[str, ast.AST]:
    """Names a module or class body binds (defs, classes, assignments, imports); ``with_self`` adds
    the ``self.x = ...`` attributes its methods set."""
    out: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        out[name.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            out.update(_names_in(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])))
    if with_self:
        for node in ast.walk(ast.Module(body=list(body), type_ignores=[])):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"):
                out.setdefault(node.attr, node)
    return out


def _module_file(parts: list[str]) -> tuple[Path | None, list[str]]:
    """(source file of the longest module prefix of ``parts``, the attribute names after it)."""
    where = ROOT
    for i, part in enumerate(parts):
        if (where / part / "__init__.py").is_file():
            where = where / part
        elif (where / f"{part}.py").is_file():
            return where / f"{part}.py", parts[i + 1:]
        else:
            return (where / "__init__.py" if i else None), parts[i:]
    return where / "__init__.py", []


def resolves(dotted: str) -> bool:
    """True when ``dotted`` (``tbjax.a.b.C.d``) names a module, or an attribute the source defines."""
    path, attrs = _module_file(dotted.split("."))
    if path is None:
        return False
    body = _tree(path).body
    for depth, name in enumerate(attrs):
        names = _names_in(body, with_self=depth > 0)
        node = names.get(name)
        if node is None:
            lazy = names.get("__getattr__")  # a module-level __getattr__ (tbjax.load_policy) names what it serves
            return depth == 0 and lazy is not None and any(
                isinstance(c, ast.Constant) and c.value == name for c in ast.walk(lazy))
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            origin = next(a.name for a in node.names if (a.asname or a.name) == name)
            target = f"{node.module}.{origin}"
            return resolves(".".join([target, *attrs[depth + 1:]])) if target.startswith("tbjax.") else True
        if not isinstance(node, ast.ClassDef):
            return True  # an attribute of a value or a function: not checked further
        body = node.body
    return True


def prose(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of what a reader reads: a whole .md file; a module's comments and
    docstrings (string statements), not its code or string values (an import cites nothing stale
    without failing; ``b"tbjax.decimal"`` is a metadata key, not a name)."""
    text = path.read_text()
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    out, before = [], tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        statement = before in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT)
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and statement):
            out += [(tok.start[0] + k, line) for k, line in enumerate(tok.string.splitlines())]
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            before = tok.type
    return out


def cited(path: Path) -> list[tuple[int, str, bool]]:
    """(line, what is cited, whether it exists) for every reference in one file."""
    out = []
    for i, line in prose(path):
        out += [(i, m, (ROOT / m).is_file()) for m in PATH.findall(line)]
        out += [(i, m, (PACKAGE / m).is_file()) for m in PACKAGE_PATH.findall(line)]
        out += [(i, m, resolves(m)) for m in DOTTED.findall(line) if m not in NOT_REFERENCES]
        for module, attr in SHORT.findall(line):
            if attr != "py":
                out.append((i, f"{module}.{attr}", resolves(f"tbjax.{module.replace('/', '.')}.{attr}")))
    return out


def test_every_cited_path_and_name_exists():
    stale = [f"{p.relative_to(ROOT)}:{i}: {what}" for p in texts() for i, what, ok in cited(p) if not ok]
    assert not stale, "stale references (point them at where the thing lives now):\n" + "\n".join(stale)


@pytest.mark.parametrize("name, ok", [
    ("tbjax.run.rundir.resolve_run_paths", True),  # a function
    ("tbjax.learner.context.Learner.initial_hidden", True),  # a method
    ("tbjax.agent.hparams.TrainerSpec.n_envs", True),  # a dataclass field
    ("tbjax.learner.trainer.TrainerSpec", True),  # re-exported
    ("tbjax.load_policy", True),  # served by the package's __getattr__
    ("tbjax.hpo", True),  # a package
    ("tbjax.run.session.resolve_run_paths", False),
    ("tbjax.distributed", False),
    ("tbjax.agent.hparams.TrainerSpec.nothing", False),
])
def test_the_resolver_tells_names_apart(name, ok):
    assert resolves(name) is ok
