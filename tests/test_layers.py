"""The folder list is the architecture: packages by layer, imports point
down only (docs/architecture.md), and `import empiarfs` needs no FUSE.

Every import counts: module level, inside functions (a lazy import is
still a dependency), and ``importlib.import_module("empiarfs....")``.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "empiarfs"

# Each top-level module or package of empiarfs and its layer. A module may
# import its own package and anything on a lower layer, never a higher or
# an equal one (equal layers are siblings that must not know each other).
LAYERS = {
    # 0: leaves: plain values and rules, no I/O of their own
    "errors": 0, "config": 0.5, "model": 0.5, "paths": 0.5, "ranges": 0,
    # 1: the network, the file formats (over any file object)
    "remote": 1, "formats": 1,
    # 2: the cache (never the network: it is handed a fetch callable);
    #    metadata exports (over remote's values)
    "cache": 2, "export": 2,
    # 3: the tree of paths, and the assembly of the parts
    "namespace": 3,
    # 4: the two faces: the kernel's and Python's
    "fuse": 4, "pyapi": 4,
    # 5: features over those
    "tools": 5,
    # 6: the command line: the only place that configures logging
    "cli": 6,
}
# The test server stands alone: it may use the leaves and the formats only.
SERVER = {"archive_server": {"errors", "config", "model", "paths", "ranges", "formats"}}
# The package's own __init__ re-exports the public API lazily.
TOP = "__init__"


def _targets(node, base: list[str]) -> list[str]:
    """Top-level empiarfs names an import node reaches."""
    found = []
    if isinstance(node, ast.ImportFrom):
        if node.level:
            stem = base[: len(base) - node.level + 1]
            full = stem + (node.module.split(".") if node.module else [])
        else:
            full = (node.module or "").split(".")
        if full[:1] != ["empiarfs"]:
            return []
        if len(full) > 1:
            found.append(full[1])
        else:  # from empiarfs import x, y: only submodules count (not __version__)
            found += [a.name for a in node.names
                      if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()]
    elif isinstance(node, ast.Import):
        found += [a.name.split(".")[1] for a in node.names if a.name.startswith("empiarfs.")]
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
          == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
          and str(node.args[0].value).startswith("empiarfs.")):
        found.append(str(node.args[0].value).split(".")[1])
    return found


def _imports(path: pathlib.Path) -> set[str]:
    # Relative imports resolve against the containing package (for an
    # __init__.py, the package itself).
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)[:-1]
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):  # every node: function-level imports too
        out.update(_targets(node, package))
    return out


def _owner(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def test_every_module_has_a_layer():
    owners = {_owner(p) for p in PACKAGE.rglob("*.py")}
    unknown = owners - set(LAYERS) - set(SERVER) - {TOP}
    assert not unknown, f"place these in a layer in tests/test_layers.py: {sorted(unknown)}"


def test_imports_point_down_only():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner(path)
        if owner == TOP:
            continue
        for target in _imports(path):
            if target == owner:
                continue
            if owner in SERVER:
                ok = target in SERVER[owner]
            elif target in SERVER:
                ok = owner == "cli"  # `empiarfs serve` and the demo
            else:
                ok = LAYERS.get(target, 99) < LAYERS[owner]
            if not ok:
                problems.append(f"{path.relative_to(PACKAGE.parent)} ({owner}) imports empiarfs.{target}")
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_the_checker_sees_function_level_and_importlib_imports(tmp_path):
    probe = PACKAGE / "cache" / "_layer_probe.py"
    probe.write_text("def f():\n    from ..namespace import catalog\n"
                     "def g():\n    import importlib\n    importlib.import_module('empiarfs.tools.search')\n")
    try:
        assert {"namespace", "tools"} <= _imports(probe)
    finally:
        probe.unlink()


def test_import_without_libfuse():
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('mfusepy', 'fuse'):\n"
        "        raise ImportError('no libfuse here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import empiarfs, empiarfs.namespace.filesystem, empiarfs.cli\n"
        "assert 'mfusepy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
