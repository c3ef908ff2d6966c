# The Airflow image for teams: apache/airflow 3.3.2 plus model-delivery's pinned requirements.
# There is no Docker engine on the development machines: this file is checked, not built, in `make test`.
FROM apache/airflow:3.3.2-python3.11

USER root
# ansible's ssh transport and the model server's health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client curl \
 && rm -rf /var/lib/apt/lists/*
USER airflow

COPY --chown=airflow:root requirements.txt constraints.txt pyproject.toml /opt/model-delivery/
RUN pip install --no-cache-dir -r /opt/model-delivery/requirements.txt -c /opt/model-delivery/constraints.txt

# dags/, plugins/ and include/ are mounted by docker-compose.yaml; the library is importable from plugins/
# (Airflow puts it on sys.path) and the model server from include/serving.
ENV PYTHONPATH=/opt/airflow/plugins:/opt/airflow/include/serving \
    MODEL_DELIVERY_MODELS_DIR=/opt/airflow/include/models \
    MODEL_DELIVERY_HOME=/opt/airflow/model-delivery
