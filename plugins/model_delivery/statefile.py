"""Local JSON state (deploy state, the deploy lease): changed under an exclusive lock, saved atomically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created with its directory) for the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def save_json(path: Path, document: Any) -> None:
    """Write ``document`` beside ``path``, then rename it over: readers see the old or the new, never half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def locked_state(lock_path: Path, read: Callable[[], dict[str, Any]],
                 save: Callable[[dict[str, Any]], None]) -> Iterator[dict[str, Any]]:
    """Under the lock: ``read()`` the state, yield it, and ``save`` it on the way out, also when the block
    fails half-way (the state must still name every process or host a step touched)."""
    with exclusive(lock_path):
        state = read()
        try:
            yield state
        finally:
            save(state)
