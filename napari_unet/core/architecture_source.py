"""The U-Net's Python source alone, for packages that must run without napari-unet.

A bioimage.io ``pytorch_state_dict`` entry names a Python file and a class that rebuilds the
network. Rather than keeping a second copy of the architecture, the file is cut out of
:mod:`napari_unet.core.model` itself: the :class:`~napari_unet.core.model.UNet` class and the
top-level definitions and imports it needs, verbatim, and nothing that imports napari-unet.
"""

from __future__ import annotations

import ast
import inspect

from napari_unet.core import model
from napari_unet.core.version import __version__

ENTRY_POINT = "UNet"


def standalone_source(entry_point: str = ENTRY_POINT) -> str:
    """Source of a module defining ``entry_point`` of :mod:`napari_unet.core.model` alone.

    Parameters
    ----------
    entry_point : str
        The top-level name the module must define.

    Returns
    -------
    str
        Python source: the module docstring, the imports from outside napari-unet that are
        used, and the top-level statements ``entry_point`` needs, in their original order.

    Raises
    ------
    ValueError
        If ``entry_point`` is not defined at the top level of the module, or needs a
        definition that comes from napari-unet.
    """
    text = inspect.getsource(model)
    tree = ast.parse(text)
    defines = {name: index for index, node in enumerate(tree.body) for name in _defined(node)}
    if entry_point not in defines:
        raise ValueError(f"{entry_point!r} is not defined at the top level of {model.__name__}")
    needed: set[int] = set()
    pending = [defines[entry_point]]
    while pending:
        index = pending.pop()
        if index in needed:
            continue
        needed.add(index)
        pending.extend(defines[name] for name in _used(tree.body[index]) if name in defines)
    used = set().union(*(_used(tree.body[index]) for index in needed))
    docstring = f"{ast.get_docstring(tree)}\n\nCut from napari_unet/core/model.py ({__version__})."
    source = f'"""{docstring}"""'
    previous = "docstring"
    for index, node in enumerate(tree.body):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            segment = ast.get_source_segment(text, node)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            kept = [alias for alias in node.names if (alias.asname or alias.name) in used]
            if not kept:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_unet"):
                raise ValueError(f"{entry_point} needs {[a.name for a in kept]} from napari-unet")
            node.names = kept
            segment = ast.unparse(node)
        elif index in needed:
            segment = ast.get_source_segment(text, node)
        else:
            continue
        kind = _kind(node)
        gap = 1 if kind == previous == "import" else 3 if "def" in (kind, previous) else 2
        source += "\n" * gap + f"{segment}"
        previous = kind
    return source + "\n"


def _kind(node: ast.stmt) -> str:
    """How a statement is spaced from its neighbours: import, def (and class) or other."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return "import"
    return "def" if isinstance(node, ast.FunctionDef | ast.ClassDef) else "other"


def _defined(node: ast.stmt) -> list[str]:
    """Top-level names a statement binds."""
    if isinstance(node, ast.FunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _used(node: ast.AST) -> set[str]:
    """Names a statement reads (the first part of dotted names)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
