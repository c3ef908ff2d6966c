"""Example data-refresh Airflow DAGs: one ``data_refresh__<model>`` DAG for each model spec
with ``trigger_on``; its asset event triggers ``release__<model>``. Wiring lives in
``model_delivery.data_refresh``."""

from model_delivery.data_refresh import data_refresh_dags

globals().update(data_refresh_dags())
