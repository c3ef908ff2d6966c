"""Model specs with a ``deploy.kubernetes`` section, built from the shipped breast_cancer spec."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from model_delivery.spec import ModelSpec
from tests.helpers.models import edit_spec

PROJECT = Path(__file__).resolve().parents[2]
NAMESPACE = "ml-serving"
IMAGE = "registry.example/model-server:1.0"
STORE = "s3://models-bucket/delivery"
DIGEST = "sha256:" + "3f9a0c1b2d4e6f8a" * 4
VERSION = "7"

CPU: dict[str, Any] = {
    "namespace": NAMESPACE,
    "image": IMAGE,
    "replicas": 3,
    "max_surge": "25%",
    "artifact_fetch": {"store_uri": STORE},
}
GPU: dict[str, Any] = {
    **CPU,
    "replicas": 2,
    "max_surge": 1,
    "resources": {"cpu_request": "2", "memory_request": "8Gi", "memory_limit": "8Gi", "gpus": 1},
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "image_pull_secrets": ["registry-credentials"],
    "artifact_fetch": {"store_uri": STORE, "credentials_secret": "model-store-credentials"},
    "canary": {"replicas": 1},
}


GPU_LM: dict[str, Any] = {
    "namespace": NAMESPACE,
    "replicas": 2,
    "startup_timeout_seconds": 600,
    "resources": {"cpu_request": "4", "memory_request": "24Gi", "memory_limit": "24Gi", "gpus": 1},
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "artifact_fetch": {"store_uri": STORE, "credentials_secret": "model-store-credentials",
                       "image": "registry.example/model-server:1.0"},
}
"""code_lm on GPUs: no image (the vllm runtime's pinned vllm/vllm-openai), one nvidia.com/gpu per pod."""


def k8s_raw(section: dict[str, Any], model: str = "breast_cancer") -> dict[str, Any]:
    raw = yaml.safe_load((PROJECT / "include" / "models" / model / "model.yaml").read_text())
    raw["deploy"] = {"target": "kubernetes", "kubernetes": copy.deepcopy(section)}
    return raw


def k8s_spec(section: dict[str, Any], model: str = "breast_cancer") -> ModelSpec:
    return ModelSpec.model_validate(k8s_raw(section, model))


def use_kubernetes(model_dir: Path, section: dict[str, Any]) -> None:
    """Point a copied model folder's spec at the kubernetes target."""
    def change(spec: dict[str, Any]) -> None:
        spec["deploy"] = {"target": "kubernetes", "kubernetes": copy.deepcopy(section)}

    edit_spec(model_dir, change)
