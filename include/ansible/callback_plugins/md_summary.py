"""Ansible callback: write a machine-readable summary of a playbook run for model-delivery.

Enabled by ``include/ansible/ansible.cfg``; writes JSON to the file named by the
``MODEL_DELIVERY_ANSIBLE_SUMMARY`` environment variable (nothing when it is unset):

    {"stats": {host: {"ok", "changed", "failures", "unreachable", "skipped", ...}},
     "custom": {host: {...set_stats per host...}},
     "failures": {host: [{"task", "msg"}]}, "unreachable": {host: [...]}}

The normal output still goes to the stdout callback, so it streams into the task log.
Results of ``no_log`` tasks arrive censored, so no secret reaches the summary.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: md_summary
type: aggregate
short_description: JSON summary of a playbook run for model-delivery
description: Writes per-host stats, custom stats and failure messages to $MODEL_DELIVERY_ANSIBLE_SUMMARY.
requirements: [enable in ansible.cfg callbacks_enabled]
"""

TAIL = 2000


def _message(result: dict[str, Any]) -> str:
    parts = [str(result.get("msg") or "")]
    for key in ("stderr", "stdout"):
        text = str(result.get(key) or "").strip()
        if text:
            parts.append(text[-TAIL:])
            break
    return "\n".join(p for p in parts if p).strip()


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "md_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[str, list[dict[str, str]]] = {}
        self.unreachable: dict[str, list[dict[str, str]]] = {}

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        if ignore_errors:
            return
        self.failures.setdefault(result._host.get_name(), []).append(
            {"task": result._task.get_name(), "msg": _message(result._result)}
        )

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self.unreachable.setdefault(result._host.get_name(), []).append(
            {"task": result._task.get_name(), "msg": _message(result._result)}
        )

    def v2_playbook_on_stats(self, stats: Any) -> None:
        path = os.environ.get("MODEL_DELIVERY_ANSIBLE_SUMMARY")
        if not path:
            return
        summary = {
            "stats": {host: stats.summarize(host) for host in sorted(stats.processed)},
            "custom": stats.custom,
            "failures": self.failures,
            "unreachable": self.unreachable,
        }
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            json.dump(summary, out, default=str)
        os.replace(tmp, path)
