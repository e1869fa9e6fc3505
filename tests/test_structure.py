"""The layering a newcomer relies on: no import cycle, no Streamlit in the engine, no page-to-page import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tli_core", "ui")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    files.update({module_name(p): p for p in (ROOT / "pages").glob("*.py")})
    files["app"] = ROOT / "app.py"
    return files


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at any depth of the file (function-local imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # a name imported from a module: the module
                t = t.rpartition(".")[0]
            if t:
                found.add(t)
    return found - {name}


def graph() -> dict[str, set[str]]:
    files = project_files()
    return {name: imports(name, path, set(files)) for name, path in files.items()}


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g[node]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep])
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)


def test_the_engine_never_imports_streamlit_or_the_ui():
    for path in (ROOT / "tli_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert n.split(".")[0] not in ("streamlit", "ui", "pages"), f"{path.relative_to(ROOT)} imports {n}"


def test_pages_hold_only_pages_and_import_no_page():
    g = graph()
    pages = [n for n in g if n.startswith("pages.")]
    assert len(pages) >= 11 and not (ROOT / "pages" / "__init__.py").exists()
    for page in pages:
        assert not [d for d in g[page] if d.startswith("pages")], page
    assert not [n for n in g if n.startswith("ui") and any(d.startswith("pages") for d in g[n])]
