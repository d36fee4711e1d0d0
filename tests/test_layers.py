"""Imports point one way (docs/architecture.md); `import empiarfs` needs no FUSE."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "empiarfs"

# module (or package) -> internal modules it must never import
FORBIDDEN = {
    "errors": {"*"},
    "model": {"*"},
    "config": {"archive", "cache", "catalog", "fs", "fuse_ops", "mount", "cli", "http", "server"},
    "http": {"archive", "cache", "catalog", "fs", "fuse_ops", "mount", "cli", "server"},
    "archive": {"cache", "catalog", "fs", "fuse_ops", "mount", "cli", "server"},
    "cache": {"http", "archive", "catalog", "fs", "fuse_ops", "mount", "cli", "server"},
    "catalog": {"fs", "fuse_ops", "mount", "cli", "cache", "http", "server"},
    "fs": {"fuse_ops", "mount", "cli", "server"},
    "fuse_ops": {"mount", "cli", "server", "http", "archive", "cache"},
    "export": {"fs", "fuse_ops", "mount", "cli", "cache", "http", "server", "catalog"},
    "server": {"fs", "fuse_ops", "mount", "cli", "cache", "http", "archive", "catalog"},
    # The Python API sits beside the FUSE layer, on top of fs.
    "api": {"fuse_ops", "mount", "cli", "server"},
    "formats": {"fs", "fuse_ops", "mount", "cli", "server", "cache", "http", "archive", "catalog"},
    "dataset": {"fuse_ops", "mount", "cli", "server"},
    "fsspec_impl": {"fuse_ops", "mount", "cli", "server"},
}


def _internal_imports(path: pathlib.Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    # Relative imports resolve against the package: for __init__.py that is
    # the module itself, for a plain module its parent.
    depth_base = module.split(".") + (["__init__"] if path.name == "__init__.py" else [])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = depth_base[: len(depth_base) - node.level]
                target = base + (node.module.split(".") if node.module else [])
                if not node.module:
                    target = [*base, *(a.name for a in node.names)][:len(base) + 1]
                found.add(".".join(target[1:2]) if len(target) > 1 else "")
            elif node.module and node.module.startswith("empiarfs."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("empiarfs."):
                    found.add(alias.name.split(".")[1])
    found.discard("")
    return found


def test_imports_point_one_way():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        top = module.split(".")[1] if "." in module else ""
        forbidden = FORBIDDEN.get(top)
        if not forbidden:
            continue
        for name in _internal_imports(path, module):
            if name == top:
                continue
            if "*" in forbidden or name in forbidden:
                problems.append(f"{module} imports empiarfs.{name}")
    assert not problems, "layering violations:\n" + "\n".join(sorted(problems))


def test_import_without_libfuse():
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('mfusepy', 'fuse'):\n"
        "        raise ImportError('no libfuse here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import empiarfs, empiarfs.fs, empiarfs.cli\n"
        "assert 'mfusepy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
