"""Airflow plugin entry point of model-delivery: the "Model releases" page and its JSON API.

Airflow's plugin loader reads only this file (plugins/.airflowignore hides the package's
own modules from it); the plugin itself lives in ``model_delivery.plugin``.
"""

from model_delivery.plugin import ModelDeliveryPlugin

__all__ = ["ModelDeliveryPlugin"]
