"""Ansible's process-wide patches do not outlive loading one of the role's modules in a test.

A CI run failed in test_code_lm_build: an earlier test in the same worker had imported md_haproxy,
Ansible had replaced ``sys.intern`` with a callable object, and torch._dynamo refused it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers.models import PROJECT

MD_HAPROXY = PROJECT / "include" / "ansible" / "roles" / "model_server" / "library" / "md_haproxy.py"


def _after_loading(load: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(PROJECT)!r})
        from importlib.util import module_from_spec, spec_from_file_location
        from tests.helpers.ansible_module import load_ansible_module, unpatched
        {load}
        print("left:", unpatched())
        import torch._dynamo  # registers its polyfill for sys.intern
        print("torch ok")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)


def test_torch_imports_after_an_ansible_module_loaded_with_the_helper() -> None:
    result = _after_loading(f"load_ansible_module(__import__('pathlib').Path({str(MD_HAPROXY)!r}), 'md')")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left: []" in result.stdout and "torch ok" in result.stdout


def test_a_plain_import_of_the_module_leaves_the_patches_that_break_torch() -> None:
    """What the helper guards against is real (so the test above is not vacuous)."""
    result = _after_loading(f"spec = spec_from_file_location('md', {str(MD_HAPROXY)!r}); "
                            "spec.loader.exec_module(module_from_spec(spec))")
    assert "left: ['sys.intern'" in result.stdout, result.stdout + result.stderr[-2000:]
    assert result.returncode != 0 and "substitute_in_graph expects a function" in result.stderr
