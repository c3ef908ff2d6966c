"""Documentation generated from code stays current."""

from __future__ import annotations

from model_delivery.spec import spec_docs
from tests.conftest import PROJECT


def test_model_spec_reference_is_current() -> None:
    committed = (PROJECT / "docs" / "model-spec.md").read_text()
    assert committed == spec_docs() + "\n", "regenerate: python -m model_delivery.spec > docs/model-spec.md"
