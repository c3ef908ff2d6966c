"""Fuzz tests (Hypothesis) of what users type: a model spec and a run's conf.

Properties: ``load_spec`` on any bytes, any YAML, or a valid spec with one value replaced by anything, returns a
``ModelSpec`` or raises ``InvalidModelSpec`` (never another exception), with a message of bounded size that names
the file. ``check_conf`` on any JSON value accepts it or raises ``InvalidConf`` in one bounded line. The examples are
bounded (a few seconds in all); a failure prints the example and the seed that reproduce it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_delivery.exceptions import InvalidConf, InvalidModelSpec
from model_delivery.release import CONF_KEYS, check_conf
from model_delivery.spec import ModelSpec, load_spec
from tests.helpers.models import copy_models

if TYPE_CHECKING:
    from pathlib import Path

FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_SPEC_MESSAGE = 16_000
"""A refusal of a spec is at most this long, whatever the spec holds (a bad spec once wrote a 39 MB import error)."""
MAX_CONF_MESSAGE = 400

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=30) | st.sampled_from(["", "..", "/etc/passwd", "a\0b", "x" * 5000, "0 2 * * *",
                                                    "Europe/Paris", "../" * 40 + "etc", "é" * 300]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_models(tmp_path_factory.mktemp("fuzz") / "models", ("breast_cancer",)) / "breast_cancer"


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example's valid spec, from a copy of its own: the tests before this one write anything into
    ``model_dir``'s model.yaml (read from there, it was whatever the last example left, e.g. ``[]``)."""
    pristine = copy_models(tmp_path_factory.mktemp("fuzz-valid") / "models", ("breast_cancer",)) / "breast_cancer"
    spec: dict[str, Any] = yaml.safe_load((pristine / "model.yaml").read_text())
    assert isinstance(spec, dict) and spec.get("deploy"), spec
    return spec


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a spec's mappings and lists, sections included."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = [prefix] if prefix else []
    for key, inner in items:
        found += _paths(inner, (*prefix, key))
    return found


def _replace(spec: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(spec))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _loads_or_refuses(model_dir: Path, content: bytes) -> None:
    (model_dir / "model.yaml").write_bytes(content)
    try:
        spec = load_spec(model_dir)
    except InvalidModelSpec as exc:
        message = str(exc)
        assert len(message) <= MAX_SPEC_MESSAGE, len(message)
        assert str(model_dir) in message  # the file (or the model folder) is named
        assert "Fix:" in message
    else:
        assert isinstance(spec, ModelSpec)


@FUZZ
@given(content=st.binary(max_size=3000))
def test_load_spec_of_any_bytes_returns_a_spec_or_refuses(model_dir: Path, content: bytes) -> None:
    _loads_or_refuses(model_dir, content)


@FUZZ
@given(document=JSON)
def test_load_spec_of_any_yaml_returns_a_spec_or_refuses(model_dir: Path, document: Any) -> None:
    _loads_or_refuses(model_dir, yaml.safe_dump(document, allow_unicode=True).encode())


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_load_spec_of_a_valid_spec_with_one_value_replaced_returns_a_spec_or_refuses(
    model_dir: Path, valid: dict[str, Any], data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from(_paths(valid)), label="path")
    value = data.draw(SCALARS | JSON, label="value")
    _loads_or_refuses(model_dir, yaml.safe_dump(_replace(valid, path, value), allow_unicode=True).encode())


CONF_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(CONF_KEYS) | st.text(max_size=600), inner, max_size=4),
                           max_leaves=8)


@FUZZ
@given(conf=CONF_VALUES | st.dictionaries(st.sampled_from(CONF_KEYS), SCALARS, max_size=3))
def test_check_conf_of_any_json_accepts_or_refuses_in_one_bounded_line(conf: Any) -> None:
    try:
        check_conf(conf)
    except InvalidConf as exc:
        message = str(exc)
        assert len(message) <= MAX_CONF_MESSAGE and "\n" not in message, message
        assert message.startswith("conf ") and "Fix:" in message
    else:
        assert isinstance(conf, dict) and set(conf) <= set(CONF_KEYS)
        assert not conf.get("force") or str(conf.get("reason") or "").strip()
