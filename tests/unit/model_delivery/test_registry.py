"""Registry over a real MLflow on SQLite: idempotent registration, lineage tags, metrics, aliases."""

from __future__ import annotations

import itertools

import pytest

from model_delivery.registry import PREVIOUS, PRODUCTION, Registry

_names = itertools.count()


def _digest(n: int) -> str:
    return f"sha256:{n:064x}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """One MLflow database for the module (creating one takes seconds); each test uses its own model."""
    return Registry(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")


@pytest.fixture
def model() -> str:
    return f"model_{next(_names)}"


def _register(registry: Registry, model: str, digest: str, run_id: str = "run-1"):
    return registry.register(
        model,
        source=f"file:///store/{model}/sha256/{digest[7:]}",
        digest=digest,
        tags={"git_sha": "abc123", "run_id": run_id, "dag_id": f"release__{model}", "data.eval.sha256": "e" * 64},
        params={"C": 1.0, "seed": 7},
        description="a test model",
    )


def test_register_is_idempotent_per_digest(registry: Registry, model: str) -> None:
    first, existed_first = _register(registry, model, _digest(1), "run-1")
    second, existed_second = _register(registry, model, _digest(1), "run-2")

    assert existed_first is False
    assert existed_second is True
    assert second.version == first.version == "1"
    assert second.tags["run_id"] == "run-1"  # the version that already held the digest
    assert registry.find_by_digest(model, _digest(1)) == second


def test_a_different_digest_is_a_new_version(registry: Registry, model: str) -> None:
    first, _ = _register(registry, model, _digest(1))
    second, existed = _register(registry, model, _digest(2))

    assert existed is False
    assert (first.version, second.version) == ("1", "2")
    assert registry.find_by_digest(model, _digest(2)).version == "2"
    assert registry.find_by_digest(model, _digest(3)) is None


def test_tags_carry_the_lineage(registry: Registry, model: str) -> None:
    version, _ = _register(registry, model, _digest(5), "manual__2026")

    stored = registry.get(model, version.version)

    assert stored.digest == _digest(5)
    assert stored.source == f"file:///store/{model}/sha256/{_digest(5)[7:]}"
    assert stored.tags["git_sha"] == "abc123"
    assert stored.tags["run_id"] == "manual__2026"
    assert stored.tags["dag_id"] == f"release__{model}"
    assert stored.tags["data.eval.sha256"] == "e" * 64
    assert stored.run_id
    run = registry.client.get_run(stored.run_id)
    assert run.data.params == {"C": "1.0", "seed": "7"}
    assert run.data.tags["git_sha"] == "abc123"
    assert stored.to_dict()["digest"] == _digest(5)


def test_log_metrics_sets_metric_tags(registry: Registry, model: str) -> None:
    version, _ = _register(registry, model, _digest(1))

    registry.log_metrics(model, version.version, {"accuracy": 0.95, "log_loss": 0.125})

    stored = registry.get(model, version.version)
    assert stored.tags["metric.accuracy"] == "0.95"
    assert registry.metrics_of(stored) == {"accuracy": 0.95, "log_loss": 0.125}
    assert registry.client.get_run(stored.run_id).data.metrics == {"accuracy": 0.95, "log_loss": 0.125}


def test_promote_moves_production_and_keeps_previous(registry: Registry, model: str) -> None:
    v1, _ = _register(registry, model, _digest(1))
    v2, _ = _register(registry, model, _digest(2))

    assert registry.promote(model, v1.version) == {"production": "1", "previous": None, "changed": True}
    assert registry.alias(model, PRODUCTION).version == "1"
    assert registry.alias(model, PREVIOUS) is None

    assert registry.promote(model, v2.version) == {"production": "2", "previous": "1", "changed": True}
    assert registry.alias(model, PRODUCTION).version == "2"
    assert registry.alias(model, PREVIOUS).version == "1"

    assert registry.promote(model, v2.version) == {"production": "2", "previous": "1", "changed": False}
    assert registry.alias(model, PRODUCTION).version == "2"
    assert registry.alias(model, PREVIOUS).version == "1"
    assert PRODUCTION in registry.get(model, "2").aliases


@pytest.mark.parametrize(
    ("create", "alias"),
    [
        pytest.param(False, PRODUCTION, id="unknown-model"),
        pytest.param(True, PRODUCTION, id="model-never-promoted"),
        pytest.param(True, "no-such-alias", id="unknown-alias"),
    ],
)
def test_alias_that_does_not_exist_is_none(registry: Registry, model: str, create: bool, alias: str) -> None:
    if create:
        _register(registry, model, _digest(1))
    assert registry.alias(model, alias) is None


@pytest.mark.parametrize(
    ("name", "digest"),
    [
        pytest.param("o'brien", _digest(1), id="quote-in-name"),
        pytest.param("model", "sha256:' or name != '", id="quote-in-digest"),
    ],
)
def test_find_by_digest_rejects_single_quotes(registry: Registry, name: str, digest: str) -> None:
    with pytest.raises(ValueError, match="single quote"):
        registry.find_by_digest(name, digest)
