"""Release DAGs for every model spec: one ``release__<model>`` Airflow DAG per
``include/models/<name>/model.yaml``. Adding a model means adding a folder; this file
never changes. The wiring lives in ``model_delivery.dag_factory``."""

from model_delivery.dag_factory import release_dags

globals().update(release_dags())
