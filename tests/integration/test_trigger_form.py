"""Airflow's own trigger form, in a real browser, opens ready to trigger a release: no field marked required
but what is (a rollback's model and version), no error, Trigger enabled.

The release DAG is served by a real api-server; beside it a control DAG with the params as they were
(``reason`` a plain string defaulting to "", booleans of type boolean) shows what the test catches.
"""

from __future__ import annotations

import shutil
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import PROJECT, run_airflow
from tests.helpers.api_server import api_server
from tests.helpers.browser import chromium
from tests.helpers.models import copy_models

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

CONTROL = '''
from airflow.sdk import DAG, Param

with DAG("trigger_form_control", schedule=None, tags=["model-delivery"], doc_md="the params as they were",
         params={"reason": Param("", type="string", maxLength=500, title="Reason"),
                 "force": Param(False, type="boolean", title="Force"),
                 "dry_run": Param(False, type="boolean", title="Dry run")}) as dag:
    pass
'''

FORM = """(() => {
  const dialog = [...document.querySelectorAll('[role=dialog]')].find(d => /Trigger Dag/i.test(d.innerText));
  if (!dialog) return null;
  const section = [...dialog.querySelectorAll('[data-part=item-trigger]')].find(t => /Run Parameters/.test(t.innerText));
  const trigger = [...dialog.querySelectorAll('button')].find(b => b.innerText.trim() === 'Trigger');
  if (!section || !trigger) return null;
  return {
    fields: [...section.parentElement.querySelectorAll('[data-part=label]')].map(l => l.innerText.replace('*', '').trim()),
    starred: [...dialog.querySelectorAll('.chakra-field__requiredIndicator')].map(
      s => s.closest('label').innerText.replace('*', '').trim()),
    section_error: [...section.querySelectorAll('.chakra-icon')].filter(i => !i.closest('[data-part=item-indicator]')).length > 0,
    trigger_disabled: trigger.disabled,
    text: dialog.innerText,
  };
})()"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("trigger-form")
    models = copy_models(base / "models", ("breast_cancer",))
    dags = base / "dags"
    shutil.copytree(PROJECT / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    (dags / "trigger_form_control.py").write_text(CONTROL)
    env = {"MODEL_DELIVERY_MODELS_DIR": str(models), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    done = run_airflow("dags", "reserialize", env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    with api_server(base / "api-server.log", env) as api:
        yield api


def trigger_form(api: Any, profile: Path, dag_id: str) -> dict[str, Any]:
    """Open the DAG's page signed in as admin, click Trigger, and read the form as it opens."""
    with chromium(profile) as page:
        page.set_cookie("_token", api.token, f"{api.url}/")
        assert page.open(f"{api.url}/dags/{dag_id}") == 200
        assert page.wait_for("!!document.querySelector('[data-testid=trigger-dag-button]')", 60), page.text()[:2000]
        page.evaluate("document.querySelector('[data-testid=trigger-dag-button]').click()")
        assert page.wait_for(f"!!({FORM})", 60), page.text()[:2000]
        time.sleep(1)  # the form checks its fields once they are in the store
        form: dict[str, Any] = page.evaluate(FORM)
        page.screenshot(f"trigger-form-{dag_id}.png")
    return form


def test_the_release_form_opens_ready_to_trigger(server: Any, tmp_path: Path) -> None:
    form = trigger_form(server, tmp_path / "profile", "release__breast_cancer")

    assert form["fields"] == ["Reason", "Force", "Dry run"], form
    assert form["starred"] == [], form  # no field marked required, booleans included
    assert not form["section_error"], form  # no error badge on open
    assert not form["trigger_disabled"], form
    assert "Optional, but required when Force is on" in form["text"]
    assert "Needs a Reason" in form["text"]


def test_the_params_as_they_were_show_what_the_user_saw(server: Any, tmp_path: Path) -> None:
    """The control: every field starred, an error badge on open, Trigger greyed out."""
    form = trigger_form(server, tmp_path / "profile", "trigger_form_control")

    assert form["starred"] == ["Reason", "Force", "Dry run"], form
    assert form["section_error"] and form["trigger_disabled"], form


def test_the_rollback_form_requires_only_model_and_version(server: Any, tmp_path: Path) -> None:
    form = trigger_form(server, tmp_path / "profile", "model_rollback")

    assert form["fields"] == ["Model", "Version", "Reason"], form
    assert form["starred"] == ["Model", "Version"], form  # both have a default, so no error on open
    assert not form["section_error"] and not form["trigger_disabled"], form
