"""The ``model_rollback`` Airflow DAG: roll a model back to its previous (or a named) version, moving
the registry alias and the serving deployment in one run. Wiring lives in
``model_delivery.rollback_dag``."""

from model_delivery.rollback_dag import rollback_dag
from model_delivery.settings import get_settings
from model_delivery.spec import discover_specs

dag = rollback_dag(sorted(discover_specs(get_settings().models_dir)[0]))
