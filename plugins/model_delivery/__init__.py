"""model-delivery: the library behind the release DAGs.

Modules here know nothing of Airflow unless their name says so (``operators``,
``dag_factory``, ``plugin``); they are tested directly.
"""
