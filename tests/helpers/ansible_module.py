"""Load one of the role's Ansible modules into the test process without leaving Ansible's patches behind.

Importing anything of ``ansible`` replaces ``sys.intern`` and ``socket.getaddrinfo`` for the whole
process with callable objects (``ansible.module_utils._internal._patches``), so that they accept
``str``/``int`` subclasses. A later ``import torch`` in the same pytest worker then fails:
torch._dynamo registers a polyfill for ``sys.intern`` and refuses anything that is not a function
("substitute_in_graph expects a function"). Which test imported torch first after which decided
whether a CI run failed. The module's own code runs the same without the patches (it passes plain
``str`` and ``int``), so they are undone as soon as it is loaded.
"""

from __future__ import annotations

import socket
import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

PATCHED = ((sys, "intern"), (socket, "getaddrinfo"))
"""What importing ansible replaces (module, attribute)."""


def unpatched() -> list[str]:
    """The names of PATCHED that are not their original functions now (empty when the process is clean)."""
    return [f"{target.__name__}.{name}" for target, name in PATCHED if _original(target, name) is not None]


def _original(target: Any, name: str) -> Any:
    """The function Ansible's patch object stands in for, or None when ``target.name`` is not patched.

    Read from the patch's class: through the instance, a plain function would come back bound to it.
    """
    return getattr(type(getattr(target, name)), "unpatched_implementation", None)


def undo_ansible_patches() -> None:
    """Put back the original ``sys.intern`` and ``socket.getaddrinfo`` (no-op when they are unpatched)."""
    for target, name in PATCHED:
        original = _original(target, name)
        if original is not None:
            setattr(target, name, original)


def load_ansible_module(path: Path, name: str) -> Any:
    """Import an Ansible module file (``library/*.py``) as ``name``, leaving the process unpatched."""
    spec = spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        undo_ansible_patches()
    return module
