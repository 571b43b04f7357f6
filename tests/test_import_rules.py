"""SPEC §1's import rules, read from the source: which dlx package may import which, and that a frontend
process never loads torch (config and params are leaves every package may use)."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAVES = {"config", "params", "cli"}
ALLOWED = {
    "frontend": {"ipc"},
    "workers": {"ipc", "engine", "models"},
    "engine": {"models", "kernels"},
    "models": {"kernels"},
    "kernels": set(),
    "ipc": set(),
}


def imported_packages(path: str, package: str) -> set[str]:
    """The top-level dlx packages (or leaf modules) a module imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"dlx.{package}" if node.level else (node.module or "")]
        found |= {name.split(".")[1] for name in names if name.startswith("dlx.")}
    return found - {package}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_spec(package):
    folder = os.path.join(ROOT, "dlx", package)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            extra = imported_packages(os.path.join(folder, name), package) - ALLOWED[package] - LEAVES
            assert not extra, f"dlx/{package}/{name} imports dlx.{sorted(extra)[0]}, which SPEC §1 does not allow"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_no_dlx_package(leaf):
    assert imported_packages(os.path.join(ROOT, "dlx", f"{leaf}.py"), leaf) <= LEAVES


def test_the_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from dlx.engine.request import Request\nimport dlx.ipc\nfrom . import sibling\n")
    assert imported_packages(str(bad), "frontend") == {"engine", "ipc"}


def test_a_frontend_process_loads_no_torch():
    code = ("import sys; import dlx.frontend.app, dlx.frontend.server, dlx.ipc.messages, dlx.params; "
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
