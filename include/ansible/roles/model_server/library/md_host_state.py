#!/usr/bin/python
"""Ansible module: everything the model_server role needs to know about a host, in one call.

Read-only (changed is always false, check mode is supported): whether systemd runs, the
runtime's identity, which artifact digests were delivered, each instance's config and
whether it runs. The role decides from this what to change, so a host that already has
the wanted state costs one module call.
"""

from __future__ import annotations

import json
import os

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: md_host_state
short_description: Inspect a model_server host (read-only)
description: Reports systemd presence, runtime identity, delivered artifacts, instance configs and liveness.
options:
  root:
    description: The model's directory on the host (model_server_root).
    type: path
    required: true
  venv:
    description: The model server's virtualenv (model_server_venv); default <root>/venv.
    type: path
  instances:
    description: Instance names to inspect.
    type: list
    elements: str
    default: [live, staging]
  unit_prefix:
    description: systemd unit name prefix; the unit of an instance is <prefix><instance>.
    type: str
    default: ""
author: model-delivery
"""

RETURN = r"""
systemd:
  description: Whether systemd runs on the host (/run/systemd/system exists).
  type: bool
  returned: always
runtime_id:
  description: The installed runtime's identity, or an empty string.
  type: str
  returned: always
artifacts:
  description: Names under <root>/artifacts (digest hex, with .verified or .incoming suffixes).
  type: list
  returned: always
configs:
  description: Each instance's config, or null when it has none.
  type: dict
  returned: always
venv_stamp:
  description: The content of <venv>/.installed (what scripts/vllm-venv.sh or the role installed there), or "".
  type: str
  returned: always
running:
  description: Whether each instance runs.
  type: dict
  returned: always
"""


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _supervised(root: str, instance: str) -> bool:
    """The supervisor's pidfile names a live process whose command line is this instance's supervisor."""
    text = _read(os.path.join(root, "run", f"{instance}.pid"))
    try:
        pid = int((text or "").strip())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = [part.decode(errors="replace") for part in handle.read().split(b"\0")]
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[-1].split()[0]
    except (OSError, ValueError):
        return False
    joined = " ".join(args)
    marker = ["md_supervise.py", "--root", os.path.realpath(root), "--instance", instance]
    return state != "Z" and "run" in args and all(part in joined for part in marker)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "venv": {"type": "path"},
            "instances": {"type": "list", "elements": "str", "default": ["live", "staging"]},
            "unit_prefix": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    root = module.params["root"]
    venv = module.params["venv"] or os.path.join(root, "venv")
    systemd = os.path.isdir("/run/systemd/system")
    configs, running = {}, {}
    for instance in module.params["instances"]:
        text = _read(os.path.join(root, f"{instance}.json"))
        try:
            configs[instance] = json.loads(text) if text else None
        except ValueError:
            configs[instance] = None  # unreadable: rewritten like a missing one
        if systemd and module.params["unit_prefix"]:
            rc, _, _ = module.run_command(["systemctl", "is-active", "--quiet", module.params["unit_prefix"] + instance])
            running[instance] = rc == 0
        else:
            running[instance] = _supervised(root, instance)
    artifacts_dir = os.path.join(root, "artifacts")
    artifacts = sorted(os.listdir(artifacts_dir)) if os.path.isdir(artifacts_dir) else []
    module.exit_json(
        changed=False,
        systemd=systemd,
        runtime_id=(_read(os.path.join(root, "runtime", ".model-delivery-runtime")) or "").strip(),
        venv_python=os.path.exists(os.path.join(venv, "bin", "python")),
        venv_stamp=(_read(os.path.join(venv, ".installed")) or "").strip(),
        artifacts=artifacts,
        configs=configs,
        running=running,
    )


if __name__ == "__main__":
    main()
