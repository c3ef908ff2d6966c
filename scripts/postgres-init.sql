-- The deployment ledger's own database on the team stack's PostgreSQL (docker-compose.yaml).
CREATE DATABASE model_delivery OWNER airflow;
