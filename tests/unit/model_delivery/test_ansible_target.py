"""The ansible target's spec, command lines, secrets and playbook runs (real ansible-playbook, local hosts)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from model_delivery.deploy import get_target
from model_delivery.deploy.ansible.spec import AnsibleTargetSpec
from model_delivery.deploy.ansible.target import AnsibleTarget, PlaybookResult
from model_delivery.exceptions import InvalidModelSpec
from model_delivery.settings import Settings
from model_delivery.spec import load_spec
from model_delivery.store import ArtifactStore
from tests.helpers.models import copy_models, edit_spec

MODEL = "breast_cancer"
LB = {"runtime_api": "/run/haproxy/admin.sock", "front_url": "http://127.0.0.1:8600"}

SPECS = [
    pytest.param({"inventory": "inventory.yml", "load_balancer": LB}, None, id="minimal"),
    pytest.param({"inventory_conn_id": "fleet", "load_balancer": LB, "serial": "25%"}, None, id="conn-percent"),
    pytest.param({"inventory": "i.yml", "load_balancer": LB, "serial": 3, "max_fail_percentage": 34}, None,
                 id="batches"),
    pytest.param({"load_balancer": LB}, "exactly one of 'inventory'", id="no-inventory"),
    pytest.param({"inventory": "i.yml", "inventory_conn_id": "x", "load_balancer": LB}, "exactly one", id="both"),
    pytest.param({"inventory": "i.yml", "load_balancer": LB, "serial": 0}, "at least 1", id="serial-0"),
    pytest.param({"inventory": "i.yml", "load_balancer": LB, "serial": "0%"}, "percentage", id="serial-0%"),
    pytest.param({"inventory": "i.yml", "load_balancer": LB, "serial": "half"}, "percentage", id="serial-word"),
    pytest.param({"inventory": "i.yml", "load_balancer": LB, "max_fail_percentage": 101}, "less than or equal",
                 id="max-fail-101"),
    pytest.param({"inventory": "i.yml"}, "load_balancer", id="no-lb"),
    pytest.param({"inventory": "i.yml", "load_balancer": {**LB, "front_url": "127.0.0.1:80"}}, "front_url",
                 id="lb-url-no-scheme"),
    pytest.param({"inventory": "i.yml", "load_balancer": LB, "hosts": ["a"]}, "hosts", id="unknown-field"),
]


@pytest.mark.parametrize(("section", "error"), SPECS)
def test_spec_section(section: dict[str, Any], error: str | None) -> None:
    if error is None:
        spec = AnsibleTargetSpec.model_validate(section)
        assert spec.group == "model_servers" and "dry_run" not in spec.model_dump()
        return
    with pytest.raises(ValidationError, match=error):
        AnsibleTargetSpec.model_validate(section)


@pytest.fixture
def target_env(tmp_path: Path) -> tuple[Path, Settings]:
    return ansible_env(tmp_path, f"file://{tmp_path / 'store'}")


def ansible_env(tmp_path: Path, artifact_root: str) -> tuple[Path, Settings]:
    """The example model with the ansible target and one local host, and settings with ``artifact_root``."""
    models = copy_models(tmp_path / "models", (MODEL,))
    root = tmp_path / "host1"
    inventory = {"all": {"children": {"model_servers": {"hosts": {"host1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "model_server_root": str(root), "model_server_port": 1}}}}}}
    (models / MODEL / "inventory.yml").write_text(yaml.safe_dump(inventory))
    edit_spec(models / MODEL, lambda spec: spec["deploy"].update(
        target="ansible", ansible={"inventory": "inventory.yml", "load_balancer": LB}))
    settings = Settings(home=tmp_path / "home", models_dir=models, artifact_root=artifact_root,
                        artifact_conn_id=None, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    return models / MODEL, settings


def make_target(target_env: tuple[Path, Settings], lines: list[str] | None = None) -> AnsibleTarget:
    model_dir, settings = target_env
    store = settings.open_store()  # a file root, or an oci:// one
    log = (lambda fmt, *args: lines.append(fmt % args)) if lines is not None else None
    target = get_target(load_spec(model_dir), settings, store, log=log)
    assert isinstance(target, AnsibleTarget)
    return target


def test_a_missing_inventory_file_names_the_field(target_env: tuple[Path, Settings]) -> None:
    model_dir, _ = target_env
    (model_dir / "inventory.yml").unlink()
    with pytest.raises(InvalidModelSpec, match=r"deploy\.ansible\.inventory.*inventory\.yml"):
        make_target(target_env)


@pytest.mark.parametrize(("check", "flags"), [
    pytest.param(False, [], id="apply"),
    pytest.param(True, ["--check", "--diff"], id="check-mode"),
])
def test_command_is_a_list_built_from_data(target_env: tuple[Path, Settings], tmp_path: Path, check: bool,
                                           flags: list[str]) -> None:
    target = make_target(target_env)
    cmd = target.build_command("rollout.yml", Path("/inv.yml"), tmp_path / "vars.json", check=check,
                               secret_args=["--private-key", "/tmp/k"])
    assert cmd[0].endswith("ansible-playbook")
    assert cmd[1].endswith("include/ansible/rollout.yml")
    assert cmd[2:6] == ["--inventory", "/inv.yml", "--extra-vars", f"@{tmp_path / 'vars.json'}"]
    assert cmd[6:] == [*flags, "--private-key", "/tmp/k"]


def test_secrets_go_to_private_files_and_are_masked(target_env: tuple[Path, Settings], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir, _ = target_env
    key_body = "c2VjcmV0LWtleS1tYXRlcmlhbC1mb3ItdGhlLXRlc3Q"
    monkeypatch.setenv("AIRFLOW_CONN_UNIT_SSH", json.dumps(
        {"conn_type": "ssh", "login": "deploy",
         "extra": {"private_key": f"-----BEGIN OPENSSH PRIVATE KEY-----\\n{key_body}\\n-----END OPENSSH PRIVATE KEY-----"}}))
    monkeypatch.setenv("AIRFLOW_CONN_UNIT_BECOME", json.dumps({"conn_type": "generic", "password": "sudo-pass-123"}))
    edit_spec(model_dir, lambda spec: spec["deploy"]["ansible"].update(ssh_conn_id="unit_ssh",
                                                                        become_conn_id="unit_become"))
    target = make_target(target_env)
    secrets = target._secrets(tmp_path)

    key_file = Path(secrets.args[secrets.args.index("--private-key") + 1])
    password_file = Path(secrets.args[secrets.args.index("--become-password-file") + 1])
    assert secrets.args[:2] == ["--user", "deploy"] and "--become" in secrets.args
    assert key_body in key_file.read_text() and key_file.read_text().endswith("-----\n")
    assert password_file.read_text() == "sudo-pass-123\n"
    for path in (key_file, password_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key_body in secrets.masked and "sudo-pass-123" in secrets.masked
    assert all(key_body not in arg and "sudo-pass-123" not in arg for arg in secrets.args)
    assert target._base_vars()["model_delivery_become"] is True


def test_playbook_result_summarises_the_callback() -> None:
    result = PlaybookResult("rollout.yml", 2, {
        "stats": {"host1": {"changed": 4}, "host2": {"changed": 1}, "host3": {"changed": 0}},
        "custom": {"_run": {}, "host1": {"md_state": "updated"}},
        "failures": {"host2": [{"task": "Wait until the server is ready", "msg": "not ready within 20 s"}]},
        "unreachable": {"host3": [{"task": "Inspect the host", "msg": "ssh: connect refused"}]},
    })
    assert not result.ok and result.changed == 5
    assert result.custom == {"host1": {"md_state": "updated"}}
    assert result.problems() == ["host2: Wait until the server is ready: not ready within 20 s",
                                 "host3: Inspect the host: ssh: connect refused"]
    assert PlaybookResult("x.yml", 4).problems() == ["ansible-playbook x.yml exited with code 4"]


def test_a_real_playbook_run_streams_into_the_log_and_reports(target_env: tuple[Path, Settings]) -> None:
    lines: list[str] = []
    target = make_target(target_env, lines)

    result = target.run_playbook("retire.yml", {})

    assert result.ok, "\n".join(lines[-40:])
    assert result.stats["host1"]["failures"] == 0 and result.changed == 0
    assert any(line.startswith("ansible | PLAY [Retire what the release no longer needs]") for line in lines)
    assert any("PLAY RECAP" in line for line in lines)
    assert not list((target.state_dir / "tmp").iterdir())  # the private run directory is gone


ENV_PLAYBOOK = """
- name: Show what the controller and a local host's modules see
  hosts: model_servers
  gather_facts: false
  tasks:
    - name: Lookups run in ansible-playbook itself
      ansible.builtin.debug:
        msg: "conn=[{{ lookup('env', 'AIRFLOW_CONN_FOO') }}] aws=[{{ lookup('env', 'AWS_SECRET_ACCESS_KEY') }}]
          fernet=[{{ lookup('env', 'AIRFLOW__CORE__FERNET_KEY') }}] home=[{{ lookup('env', 'HOME') }}]"
    - name: A module's whole environment
      ansible.builtin.command: env
      register: module_env
      changed_when: false
    - name: Print it
      ansible.builtin.debug:
        var: module_env.stdout_lines
"""


def test_ansible_playbook_sees_no_secret_of_the_workers_environment(
        target_env: tuple[Path, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"AIRFLOW_CONN_FOO": "postgres://u:conn-secret@db/x", "AWS_SECRET_ACCESS_KEY": "aws-secret",
               "AIRFLOW__CORE__FERNET_KEY": "fernet-secret", "GITHUB_TOKEN": "gh-secret"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ANSIBLE_STDOUT_CALLBACK", "json")  # the worker's ANSIBLE_* are not ours: not taken either
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    playbook = tmp_path / "env.yml"
    playbook.write_text(ENV_PLAYBOOK)
    lines: list[str] = []
    target = make_target(target_env, lines)

    result = target.run_playbook(str(playbook), {})

    output = "\n".join(lines)
    assert result.ok, output[-4000:]
    assert "conn=[] aws=[] fernet=[]" in output and f"home=[{os.environ['HOME']}]" in output
    assert not [value for value in secrets.values() if value in output]
    assert not [name for name in secrets if f"{name}=" in output]
    assert "LC_TIME=C.UTF-8" in output and "ANSIBLE_STDOUT_CALLBACK" not in output  # allowed; ignored
    assert any("PLAY RECAP" in line for line in lines)  # the default callback: ours, not the worker's json


def test_rollback_of_a_run_that_deployed_nothing_is_a_no_op(target_env: tuple[Path, Settings]) -> None:
    assert make_target(target_env).rollback("never-ran") == {"action": "none", "serving": None}


def _supervisor() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "include/ansible/roles/model_server/files/md_supervise.py"
    spec = importlib.util.spec_from_file_location("md_supervise", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _host_config(command: list[str], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "version": "3", "digest": "sha256:" + "a" * 64, "artifact": "/srv/m/artifacts/aa",
            "host": "0.0.0.0", "port": 8080, "python": "/srv/venv/bin/python", "pythonpath": "/srv/m/runtime",
            "graceful_timeout": 5.0, "command": command, **extra}


def test_the_model_server_command_reaches_the_host_whole_and_matches_the_role_default(
        target_env: tuple[Path, Settings]) -> None:
    """The target sends the runtime's own command; the role's default (for the role used alone) is the same."""
    runtime_vars = make_target(target_env)._runtime_vars()
    defaults = yaml.safe_load((Path(__file__).resolve().parents[3] / "include/ansible/roles/model_server/defaults/"
                               "main.yml").read_text())
    assert runtime_vars["model_server_command"] == defaults["model_server_command"]
    assert runtime_vars["model_server_ready_protocol"] == defaults["model_server_ready_protocol"] == "open-inference"
    argv = _supervisor().Instance(Path("/srv/m"), "live").command(_host_config(runtime_vars["model_server_command"]))
    assert argv == ["/srv/venv/bin/python", "-m", "model_server", "--artifact", "/srv/m/artifacts/aa", "--digest",
                    "sha256:" + "a" * 64, "--model-name", "m", "--model-version", "3", "--host", "0.0.0.0",
                    "--port", "8080", "--graceful-timeout", "5.0"]


def _as_language_model(model_dir: Path, **serving: Any) -> None:
    """Make the copied breast_cancer a language model served by vLLM (with golden prompts, as one needs)."""
    shutil.copy(Path(__file__).resolve().parents[3] / "include" / "models" / "code_lm" / "golden.json",
                model_dir / "golden.json")
    edit_spec(model_dir, lambda spec: spec.update(
        task="language-model", evaluation={"metrics": ["perplexity"]}, gate={"thresholds": {"perplexity": {"max": 9}}},
        serving={"runtime": "vllm", **serving}))


def test_a_vllm_spec_sends_vllms_command_env_and_readiness(target_env: tuple[Path, Settings], tmp_path: Path) -> None:
    model_dir, _ = target_env
    _as_language_model(model_dir, args={"max_model_len": 256, "enforce_eager": True,
                                        "override_generation_config": '{"temperature": 0}'})
    target = make_target(target_env)
    base = target._base_vars()
    assert base["model_server_runtime"] == "vllm" and base["model_server_ready_protocol"] == "openai"
    assert base["model_server_ready_timeout"] == 600.0  # the runtime's default: the spec did not set one
    assert base["model_server_env"]["TMPDIR"] == "{tmp}" and base["model_server_env"]["HF_HUB_OFFLINE"] == "1"
    assert base["model_server_env"]["VLLM_CACHE_ROOT"] == "{scratch}/vllm"
    assert base["model_server_env"]["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"  # live and staging share a host
    instance = _supervisor().Instance(tmp_path / "root", "live")
    config = _host_config(base["model_server_command"], env=base["model_server_env"])
    argv = instance.command(config)
    assert argv[:3] == ["/srv/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == "/srv/m/artifacts/aa" and argv[argv.index("--port") + 1] == "8080"
    # A user's argument with braces is one argument, untouched; nothing is pasted into it.
    assert argv[argv.index("--override-generation-config") + 1] == '{"temperature": 0}'
    assert "--graceful-timeout" not in argv
    env = instance.env(config)
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "root" / "scratch" / "vllm")  # live and staging share it
    assert len(env["TMPDIR"]) < 40 and Path(env["TMPDIR"]).is_dir()  # vLLM's sockets: paths of at most 107 bytes
    assert env["PYTHONPATH"] == "/srv/m/runtime"
    Path(env["TMPDIR"]).rmdir()
    edit_spec(model_dir, lambda spec: spec["deploy"]["ansible"].update(ready_timeout_seconds=90))
    assert make_target(target_env)._base_vars()["model_server_ready_timeout"] == 90  # the spec's own wins


def test_a_vllm_artifact_with_a_pickle_is_refused_before_it_reaches_a_host(target_env: tuple[Path, Settings],
                                                                             tmp_path: Path) -> None:
    from model_delivery.exceptions import TamperedArtifact

    model_dir, settings = target_env
    _as_language_model(model_dir)
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text("{}")
    (lm / "model.safetensors").write_bytes(b"\0" * 8)
    (lm / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle: loading it runs code
    stored = ArtifactStore(settings.artifact_root).put_directory(MODEL, lm)
    target = make_target(target_env)
    with pytest.raises(TamperedArtifact, match=r"pickle files \['pytorch_model.bin'\]"):
        target._release_vars({"version": "1", "digest": stored.digest})
    assert not (tmp_path / "host1").exists()  # nothing was run on the host


def test_pulling_hosts_get_the_store_as_they_mount_it_and_nothing_is_copied_here(
    target_env: tuple[Path, Settings], tmp_path: Path
) -> None:
    model_dir, settings = target_env
    src = tmp_path / "build"
    src.mkdir()
    (src / "model.bin").write_bytes(b"weights")
    stored = ArtifactStore(settings.artifact_root).put_directory(MODEL, src)
    edit_spec(model_dir, lambda spec: spec["deploy"]["ansible"].update(artifact_transfer="pull",
                                                                       store_path_on_hosts="/mnt/models"))
    target = make_target(target_env)

    release = target._release_vars({"version": "1", "digest": stored.digest})["model_delivery_release"]

    hex_ = stored.digest.removeprefix("sha256:")
    assert release["delivery"] == {"transfer": "pull", "blobs": "/mnt/models/blobs/sha256",
                                   "folder": f"/mnt/models/{MODEL}/sha256/{hex_}"}
    assert Path(release["artifact_src"], "MANIFEST.json").is_file()  # the role reads the manifest there
    assert not (target.state_dir / "artifacts").exists()  # no copy on the controller


def test_pull_from_a_store_hosts_cannot_mount_is_refused_naming_the_fix(target_env: tuple[Path, Settings]) -> None:
    from model_delivery.exceptions import DeployFailed

    model_dir, settings = target_env
    edit_spec(model_dir, lambda spec: spec["deploy"]["ansible"].update(artifact_transfer="pull"))
    target = get_target(load_spec(model_dir), settings, ArtifactStore("memory://bucket/models"))
    assert isinstance(target, AnsibleTarget)
    with pytest.raises(DeployFailed, match=r"artifact_transfer is 'pull'.*Fix: use artifact_transfer: push"):
        target._release_vars({"version": "1", "digest": "sha256:" + "a" * 64})


def test_push_packs_the_small_files_and_the_manifest_into_one_archive(target_env: tuple[Path, Settings],
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One transfer and one unpack per host for the small files; a large file is left to be copied on its own."""
    import tarfile

    from model_delivery.deploy.ansible import target as target_module

    model_dir, settings = target_env
    src = tmp_path / "build"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (src / "weights.bin").write_bytes(b"\1" * 64)
    stored = ArtifactStore(settings.artifact_root).put_directory(MODEL, src)
    monkeypatch.setattr(target_module, "BUNDLE_FILE_MAX", 16)
    target = make_target(target_env)

    release = target._release_vars({"version": "1", "digest": stored.digest})["model_delivery_release"]

    delivery = release["delivery"]
    assert delivery["transfer"] == "push"
    assert delivery["bundled"] == ["config.json", "tokenizer/vocab.txt", "MANIFEST.json"]
    with tarfile.open(delivery["bundle"]) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == delivery["bundled"]
        assert all(m.uid == 0 and m.mode == 0o644 and m.isfile() for m in members)
        fetched = Path(release["artifact_src"])
        for member in members:
            extracted = archive.extractfile(member)
            assert extracted is not None and extracted.read() == (fetched / member.name).read_bytes()
    assert not Path(delivery["bundle"]).is_relative_to(fetched)  # beside the verified files, not among them


def test_every_playbook_run_gets_the_model_server_package_as_one_archive(target_env: tuple[Path, Settings]) -> None:
    import tarfile

    from model_delivery.deploy.ansible.target import SERVING_PACKAGE

    seen: dict[str, Any] = {}
    target = make_target(target_env)
    original = target.build_command

    def spy(playbook: str, inventory: Path, vars_file: Path, **kwargs: Any) -> list[str]:
        variables = json.loads(vars_file.read_text())
        archive = Path(variables["model_server_package_archive"])
        seen["source_dir"] = variables["model_server_source_dir"]  # the role's runtime identity hashes these files
        with tarfile.open(archive) as tar:
            seen["names"] = sorted(tar.getnames())
            seen["app"] = tar.extractfile("app.py").read()  # type: ignore[union-attr]
        return original(playbook, inventory, vars_file, **kwargs)

    target.build_command = spy  # type: ignore[method-assign]
    assert target.run_playbook("retire.yml", {}).ok
    assert seen["names"] == sorted(p.name for p in SERVING_PACKAGE.glob("*.py"))
    assert seen["app"] == (SERVING_PACKAGE / "app.py").read_bytes()
    assert seen["source_dir"] == str(SERVING_PACKAGE)


def _host_receives(release: dict[str, Any], host: Path) -> Path:
    """What the role does on a host before install-artifact (push): unpack the bundle, copy the other files."""
    import tarfile

    delivery, incoming = release["delivery"], host / "a.incoming"
    incoming.mkdir(parents=True)
    with tarfile.open(delivery["bundle"]) as archive:
        archive.extractall(incoming, filter="data")
    src = Path(release["artifact_src"])
    for entry in json.loads((src / "MANIFEST.json").read_text())["files"]:
        if entry["path"] not in delivery["bundled"]:
            (incoming / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / entry["path"], incoming / entry["path"])
    return incoming


def test_a_bundle_tampered_on_the_controller_is_refused_by_the_host(target_env: tuple[Path, Settings],
                                                                    tmp_path: Path) -> None:
    """The controller's cache of a fetched artifact is trusted while no file's size, mtime or inode changed: a
    small file rewritten in place behind that identity goes into the bundle, and the host, which verifies every
    file against the manifest and the manifest against the digest (``install-artifact``), refuses it."""
    from tests.helpers.host_runtime import install_artifact, make_runtime

    model_dir, settings = target_env
    src = tmp_path / "build"
    src.mkdir()
    (src / "config.json").write_text('{"layers": 2}\n')
    (src / "weights.bin").write_bytes(os.urandom(4096))
    digest = ArtifactStore(settings.artifact_root).put_directory(MODEL, src).digest
    target = make_target(target_env)
    runtime = make_runtime(tmp_path / "runtime")

    good = target._release_vars({"version": "1", "digest": digest})["model_delivery_release"]
    done = install_artifact(runtime, _host_receives(good, tmp_path / "good"), tmp_path / "good" / "a", digest)
    assert done.returncode == 0, done.stderr  # the control: an untouched bundle installs

    cached = Path(good["artifact_src"]) / "config.json"
    before = cached.stat()
    cached.write_text('{"layers": 9}\n')  # same size, and the same mtime given back: the cache's stamp holds
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))
    tampered = target._release_vars({"version": "1", "digest": digest})["model_delivery_release"]
    host = tmp_path / "host"
    incoming = _host_receives(tampered, host)
    assert (incoming / "config.json").read_text() == '{"layers": 9}\n'  # the tampered bytes reached the host

    done = install_artifact(runtime, incoming, host / "a", digest)

    assert done.returncode == 1
    assert f"refusing the copy of {digest}" in done.stderr and "config.json" in done.stderr
    assert not (host / "a").exists()


def test_retire_prunes_the_controllers_cache_but_what_the_hosts_keep_and_what_was_just_used(
        target_env: tuple[Path, Settings]) -> None:
    """Every pushed digest left a verified copy and a bundle on the controller; retire removes those of digests
    the hosts no longer keep, and leaves a digest used within the grace (a stage in flight may not have recorded
    it yet)."""
    from model_delivery.deploy.ansible.target import CACHE_GRACE_SECONDS

    target = make_target(target_env)
    cache = target.state_dir / "artifacts"
    old, kept, young = (f"{c}" * 64 for c in "abc")
    for hex_digest in (old, kept, young):
        (cache / hex_digest).mkdir(parents=True)
        (cache / hex_digest / "model.bin").write_bytes(b"x")
        (cache / f".{hex_digest}.verified").write_text("{}")
        (cache / f"{hex_digest}.bundle.tar").write_bytes(b"tar")
    (cache / f".{old}.partial").mkdir()  # a fetch killed long ago
    long_ago = time.time() - CACHE_GRACE_SECONDS - 60
    for path in cache.iterdir():
        if young not in path.name:
            os.utime(path, (long_ago, long_ago))
    with target._locked() as state:
        state["delivered"] = [f"sha256:{kept}"]
        target._save(state)

    done = target.retire("a-run")

    assert done["pruned_from_cache"] == [f"sha256:{old}"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [kept, f".{kept}.verified", f"{kept}.bundle.tar", young, f".{young}.verified", f"{young}.bundle.tar"])
    assert target.retire("a-run")["pruned_from_cache"] == []
