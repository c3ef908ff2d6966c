"""ModelSpec: the contract of one model, loaded from ``include/models/<name>/model.yaml``.

Adding a model means adding a folder with a ``model.yaml``, a build entrypoint and
golden requests; no DAG code changes. Every field is documented here, and
``docs/model-spec.md`` is generated from the same descriptions
(``python -m model_delivery.spec --docs``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from model_delivery.deploy import DEFAULT_TARGET, TARGETS
from model_delivery.deploy.kubernetes.spec import DNS_LABEL, ResourcesSpec, Toleration
from model_delivery.exceptions import InvalidModelSpec

if TYPE_CHECKING:
    from collections.abc import Iterable

    from model_delivery.deploy.ansible.spec import AnsibleTargetSpec
    from model_delivery.deploy.kubernetes.spec import KubernetesTargetSpec
    from model_delivery.deploy.local.spec import LocalTargetSpec

SPEC_FILE = "model.yaml"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"

CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
LM_METRICS = ("perplexity", "bits_per_byte", "next_token_accuracy")
TASK_METRICS = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS,
                "language-model": LM_METRICS}


class _FieldError(ValueError):
    """A cross-field problem that names its field (pydantic reports model validators at the top level)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildContainerSpec(_Strict):
    """Run the build entrypoint in a container image (with GPUs if asked) instead of on the Airflow worker."""

    image: str = Field(
        min_length=1,
        description="Build image: Python, the build's libraries, fsspec for the store, and the model folder at "
        "model_dir.",
    )
    runner: Literal["kubernetes", "docker"] = Field(
        "kubernetes", description="`kubernetes`: a pod through KubernetesPodOperator; `docker`: DockerOperator."
    )
    model_dir: str = Field("/workspace/model", pattern=r"^/", description="Where the image holds the model folder.")
    namespace: str = Field("default", pattern=DNS_LABEL, description="Namespace of the build pod (kubernetes).")
    conn_id: str | None = Field(
        None, description="Airflow connection: Kubernetes (default kubernetes_default) or Docker (default: local)."
    )
    store_uri: str | None = Field(
        None, description="Artifact store root as the build container sees it; empty: MODEL_DELIVERY_ARTIFACT_ROOT."
    )
    credentials_secret: str | None = Field(
        None, pattern=DNS_LABEL, description="Secret whose keys become the build pod's environment (store access)."
    )
    resources: ResourcesSpec = Field(
        default_factory=lambda: ResourcesSpec.model_validate(
            {"cpu_request": "1", "memory_request": "2Gi", "memory_limit": "4Gi"}),
        description="Resources of the build container, GPUs included. Default: 1 CPU and 2Gi memory requested, "
        "4Gi memory limit.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the build pod must run on.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the build pod tolerates.")


class BuildSpec(_Strict):
    """How the model is built."""

    entrypoint: str = Field(
        "train.py",
        description="Python file in the model folder, run as its own process in a fresh working directory. "
        "It is called with `--output-dir DIR` and must write DIR/model/ (the artifact, with serving.json), "
        "DIR/data/train.csv or DIR/data/train.parquet, and DIR/data/eval.csv or DIR/data/eval.parquet "
        "(exactly one file per data set).",
    )
    params: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Hyper-parameters passed to the entrypoint as JSON in `--params`; recorded in MLflow.",
    )
    timeout_seconds: int = Field(1800, ge=1, le=86400, description="The build is killed after this long.")
    threads: int = Field(
        1, ge=1, le=1024,
        description="Threads of every BLAS and OpenMP runtime in the build (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, "
        "MKL_NUM_THREADS, ...). Fixed, not the machine's core count, so the build is reproducible; raise it for "
        "speed where the same value is used on every machine.",
    )
    seed: int = Field(
        0, ge=0, le=4294967295,
        description="The build's seed: PYTHONHASHSEED and MODEL_DELIVERY_SEED (for the entrypoint's own random "
        "generators).",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Fixed environment variables of the build, the same on every runner, for example "
        "`OPENBLAS_CORETYPE: Haswell` to pin the BLAS kernel across machines. Not for secrets (the spec is in "
        "git); PATH, HOME, TMPDIR, the thread and seed variables are set by the runner and other fields.",
    )
    container: BuildContainerSpec | None = Field(
        None, description="Run the build in this container image (KubernetesPodOperator or DockerOperator, with "
        "GPUs if asked) instead of on the Airflow worker."
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        from model_delivery.build_env import ENV_NAME_PATTERN, RESERVED

        for name in value:
            if not re.fullmatch(ENV_NAME_PATTERN, name):
                raise ValueError(f"{name[:80]!r} is not an environment variable name: use upper case, digits and _")
            if name in RESERVED:
                raise ValueError(f"{name} is set by the build runner: use build.threads or build.seed, or drop it")
        return value


class EvaluationSpec(_Strict):
    """How the candidate is measured on held-out data."""

    label: str = Field("target", min_length=1, description="Column of the evaluation data holding the truth "
                       "(classification and regression).")
    metrics: list[str] = Field(
        min_length=1,
        description="Metrics to compute. Classification: "
        + ", ".join(CLASSIFICATION_METRICS)
        + ". Regression: "
        + ", ".join(REGRESSION_METRICS)
        + ". Language model: "
        + ", ".join(LM_METRICS)
        + " (on the held-out text blocks of the eval data; see docs/llm.md).",
    )
    max_length: int = Field(
        2048, ge=2, le=1_000_000,
        description="Language model: tokens scored per held-out block at most (with the leading `<s>`); the "
        "trained context, e.g. the build's seq_len.",
    )


class DriftSpec(_Strict):
    """Per-feature drift thresholds against the reference data."""

    ks_max: float = Field(
        0.2, gt=0, le=1, description="Numeric features drift when their two-sample KS statistic exceeds this."
    )
    psi_max: float = Field(
        0.2, gt=0, description="Categorical features drift when their Population Stability Index exceeds this."
    )
    per_feature: dict[str, float] = Field(
        default_factory=dict, description="Threshold overrides by feature name (KS or PSI, by the feature's test)."
    )
    exclude: list[str] = Field(default_factory=list, description="Columns not tested for drift.")


class ValidationSpec(_Strict):
    """Data checks on the training and evaluation data, before the model is measured."""

    suite: str = Field(
        description="Great Expectations 1.x suite (JSON) in the model folder, run on the training and "
        "the evaluation data."
    )
    reference: str = Field(
        description="CSV or Parquet (.parquet) file in the model folder with the reference data: the expected "
        "columns and types, and the distributions drift is measured against."
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="Features tested with PSI; other numeric features use KS. For classification, the "
        "label is always categorical.",
    )
    drift: DriftSpec = Field(default_factory=DriftSpec, description="Drift thresholds.")  # type: ignore[arg-type]


class Threshold(_Strict):
    """Absolute bounds for one metric; at least one of min and max."""

    min: float | None = Field(None, description="The metric must be >= min.")
    max: float | None = Field(None, description="The metric must be <= max.")

    @model_validator(mode="after")
    def _bounds(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("give at least one of min and max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); swap them")
        return self


LOWER_IS_BETTER = ("log_loss", "rmse", "mae", "perplexity", "bits_per_byte")


class RegressionCheck(_Strict):
    """No regression of one metric against the production version, on the same evaluation data."""

    tolerance: float = Field(0.0, ge=0, description="How much worse the candidate may be.")
    relative: bool = Field(
        False, description="The tolerance is a fraction of the production value (0.01 = 1%), not an absolute amount."
    )
    direction: Literal["higher", "lower"] | None = Field(
        None,
        description="Which way is better. Default: lower for " + ", ".join(LOWER_IS_BETTER) + "; higher otherwise.",
    )


class SliceGate(_Strict):
    """Thresholds that every slice of the evaluation data must meet, slices being the values of a column."""

    column: str = Field(min_length=1, description="Column of the evaluation data whose values define the slices.")
    thresholds: dict[str, Threshold] = Field(min_length=1, description="Bounds per metric for every slice.")
    min_rows: int = Field(
        20, ge=1, description="Slices with fewer rows are reported but not judged (too noisy)."
    )


class BootstrapSpec(_Strict):
    """Bootstrap confidence intervals, so that noise alone cannot flip a no-regression verdict."""

    samples: int = Field(500, ge=50, le=20000, description="Number of bootstrap resamples of the evaluation rows.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")
    seed: int = Field(0, description="Random seed, so a verdict can be reproduced.")


class GateSpec(_Strict):
    """What the candidate must meet before it may be deployed."""

    thresholds: dict[str, Threshold] = Field(
        default_factory=dict,
        description="Absolute bounds per metric, e.g. `accuracy: {min: 0.9}`. Every metric named here "
        "must be listed in evaluation.metrics.",
    )
    no_regression: dict[str, RegressionCheck] = Field(
        default_factory=dict,
        description="Metrics that must not get worse than the `production` version's, measured on the same "
        "evaluation data, e.g. `accuracy: {tolerance: 0.01}`.",
    )
    slices: list[SliceGate] = Field(default_factory=list, description="Per-slice thresholds.")
    bootstrap: BootstrapSpec | None = Field(
        None,
        description="When set, a regression is only a regression when the whole confidence interval of "
        "(candidate - production) is worse than the tolerance.",
    )
    allow_no_thresholds: bool = Field(
        False,
        description="The gate fails closed: with nothing to judge by it refuses the release unless this is true.",
    )


class SmokeSpec(_Strict):
    """Golden requests sent to a deployed candidate before and after it takes traffic."""

    golden: str = Field(
        "golden.json",
        description="JSON file in the model folder: a list of {name, inputs, expect} (for a language model, golden "
        "prompts: see docs/llm.md); see docs/model-spec.md. Its form is checked when the spec loads.",
    )
    latency_budget_ms: float = Field(
        250.0, gt=0, description="Budget for the p95 latency of the golden requests, in milliseconds."
    )
    repeats: int = Field(20, ge=1, le=10000, description="Each golden request is sent this many times.")
    ttft_budget_ms: float = Field(
        2000.0, gt=0, description="Language model: budget for the p95 time to first token under the smoke load, in "
        "milliseconds.",
    )
    tpot_budget_ms: float = Field(
        500.0, gt=0, description="Language model: budget for the p95 time per output token (after the first) under "
        "the smoke load, in milliseconds.",
    )
    concurrency: int = Field(
        4, ge=1, le=256, description="Language model: streams in flight at once while TTFT and TPOT are measured "
        "(`repeats` streams of each golden prompt in all).",
    )
    protocol: Literal["rest", "grpc"] = Field(
        "rest",
        description="How the golden requests are sent to the model server: `rest` (the Open Inference Protocol "
        "over HTTP, JSON) or `grpc` (the same protocol over gRPC, `inference.GRPCInferenceService`; needs "
        "`serving.grpc: true`). The answers are checked alike either way, and the record names the protocol. "
        "`model_server` runtime only.",
    )


class ServingSpec(_Strict):
    """What serves the model: a runtime, with its arguments."""

    runtime: str = Field(
        "model_server",
        description="Serving runtime: `model_server` (ours: the Open Inference Protocol, for scikit-learn models) or "
        "`vllm` (the OpenAI-compatible API, for Hugging Face-format language models; in its own virtualenv).",
    )
    args: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Arguments of the runtime's server, each as `--key value` (`_` becomes `-`; `true` is a bare "
        "flag). For vllm: max_model_len, dtype, kv_cache_memory_bytes, enforce_eager, ...",
    )
    grpc: bool = Field(
        False,
        description="Also serve the Open Inference Protocol over gRPC (`model_server` runtime only): each server "
        "gets a gRPC port beside its HTTP port (`--grpc-port`, same token and limits), and the target exposes one: "
        "the local front on `deploy.local.grpc_port`, the HAProxy gRPC frontend "
        "(`deploy.ansible.load_balancer.grpc_front`), the Service port `grpc` on Kubernetes.",
    )
    token_conn_id: str | None = Field(
        None, min_length=1,
        description="Airflow connection whose password field is the bearer token the model servers require "
        "(`Authorization: Bearer`): metadata, model readiness and inference need it; /v2/health/* and /metrics stay "
        "open. The target passes it to its servers in their environment (never on a command line), and the smoke "
        "test and verify send it. Empty: no authentication. E.g. `model_delivery_serving_token`. The kubernetes "
        "target reads it from deploy.kubernetes.token_secret.",
    )

    @field_validator("args")
    @classmethod
    def _no_grpc_port(cls, value: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        if any(key.replace("-", "_") == "grpc_port" for key in value):
            raise ValueError("grpc_port is chosen by the deploy target: use serving.grpc: true and remove it from "
                             "serving.args")
        return value

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        from model_delivery.runtimes import RUNTIMES

        if value not in RUNTIMES:
            raise ValueError(f"unknown runtime {value[:80]!r}: choose from {sorted(RUNTIMES)}")
        return value


class SecuritySpec(_Strict):
    """What the release does with untrusted model files."""

    pickle_scan: Literal["refuse-dangerous", "warn", "off"] = Field(
        "refuse-dangerous",
        description="Static scan (picklescan) of every pickle-bearing file of the build output before it is "
        "stored, and of the production version before it is measured again. `refuse-dangerous`: a file that "
        "imports something able to run code when loaded (`os.system`, `subprocess`, `builtins.eval`, ...), or "
        "that could not be scanned to its end, fails the build naming the file and the globals; nothing is "
        "stored. `warn`: the same findings are logged and recorded, and the build goes on. `off`: no scan. See "
        "docs/ARCHITECTURE.md (Untrusted model files).",
    )


class SigningSpec(_Strict):
    """Signatures of the artifact (OpenSSF model-signing, offline): signed by the build, verified by every target."""

    mode: Literal["off", "optional", "required"] = Field(
        "off",
        description="`required`: the build signs the artifact (it fails when no key is configured) and every target "
        "refuses an artifact that is unsigned or whose signature does not hold, before serving it. `optional`: "
        "signed when the connection has a key; a signature present must hold. `off`: neither. `signing: required` "
        "alone is short for `signing: {mode: required}`.",
    )
    method: Literal["key", "certificate"] = Field(
        "key",
        description="`key`: an EC private key (P-256, P-384 or P-521) signs and its public key verifies. "
        "`certificate`: the key and its X.509 certificate (extra `certificate` of the connection) sign, and the CA "
        "certificates in `certificate_chain` verify.",
    )
    conn_id: str = Field(
        "model_delivery_signing", min_length=1,
        description="Airflow connection holding the private key in PEM (its password field, or extra "
        "`private_key`; extra `key_password` if encrypted, `certificate` and `certificate_chain` for the certificate "
        "method). Read by the build task only; the key never reaches logs, XCom or records.",
    )
    public_key: str | None = Field(
        None,
        description="Method `key`: PEM public key file in the model folder that targets verify with, e.g. "
        "`keys/signing.pub`. Empty: the connection's extra `public_key`.",
    )
    certificate_chain: str | None = Field(
        None,
        description="Method `certificate`: PEM file in the model folder with the CA certificates a signing "
        "certificate must chain to. Empty: the connection's extra `certificate_chain`.",
    )


class _Deploy(_Strict):
    """Where and how the model is served."""

    lease_wait_seconds: float = Field(
        3600.0, gt=0, le=7 * 86400,
        description="How long deploy_staging waits for the model's deploy lease while another run (a release or "
        "a rollback) holds it, retrying every 10 s; then it fails, naming that run.")

    if TYPE_CHECKING:  # for the type checker only: DeploySpec's fields are made from TARGETS (below)
        target: str
        local: LocalTargetSpec | None
        ansible: AnsibleTargetSpec | None
        kubernetes: KubernetesTargetSpec | None

    @model_validator(mode="after")
    def _target_settings(self) -> _Deploy:
        if getattr(self, self.target) is None:
            hint = TARGETS[self.target].section_hint
            raise ValueError(f"target {self.target!r} needs a '{self.target}:' section {hint}")
        return self


def _deploy_spec() -> type[_Deploy]:
    """DeploySpec from the registry of targets: ``target`` is one of its names, and each target has its
    optional section, of the spec class its entry names (``model_delivery.deploy.TARGETS``)."""
    names = list(TARGETS)
    listed = [f"`{name}` ({TARGETS[name].description})" for name in names]
    choices = f"{', '.join(listed[:-1])} or {listed[-1]}" if len(listed) > 1 else listed[0]
    fields: dict[str, Any] = {
        "target": (Literal[tuple(names)], Field(DEFAULT_TARGET, description=f"Deploy target: {choices}.")),
    }
    for name, entry in TARGETS.items():
        fields[name] = (entry.load_spec() | None, Field(None, description=f"Settings of the `{name}` target."))
    return create_model("DeploySpec", __base__=_Deploy, __doc__=_Deploy.__doc__, __module__=__name__, **fields)


if TYPE_CHECKING:
    DeploySpec = _Deploy
else:
    DeploySpec = _deploy_spec()


class ModelSpec(_Strict):
    """One model: how it is built, measured, gated, deployed and smoke-tested."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Model name: lowercase letters, digits and _; must equal the folder name. "
        "The DAG is `release__<name>` and the registry model is `<name>`.",
    )
    description: str = Field(min_length=1, description="One paragraph; shown as the DAG's documentation.")
    owner: str = Field("ml-platform", min_length=1, description="Airflow owner of the release DAG.")
    tags: list[str] = Field(default_factory=list, description="Extra Airflow tags for the release DAG.")
    retries: int = Field(1, ge=0, le=10, description="Retries for infrastructure errors (never for verdicts).")
    task: Literal["classification", "regression", "language-model"] = Field(
        description="Kind of model; decides which metrics exist. `language-model`: a Hugging Face-format causal LM, "
        "served by a runtime that speaks the OpenAI API (`serving.runtime: vllm`), with golden prompts."
    )
    build: BuildSpec = Field(default_factory=BuildSpec, description="How the model is built.")  # type: ignore[arg-type]
    validation: ValidationSpec = Field(description="Data checks: expectations, schema and drift.")
    evaluation: EvaluationSpec = Field(description="How the candidate is measured.")
    gate: GateSpec = Field(default_factory=GateSpec, description="What the candidate must meet.")  # type: ignore[arg-type]
    smoke: SmokeSpec = Field(default_factory=SmokeSpec, description="Golden requests and latency budget.")  # type: ignore[arg-type]
    serving: ServingSpec = Field(default_factory=ServingSpec, description="What serves the model.")  # type: ignore[arg-type]
    deploy: DeploySpec = Field(description="Where the model is served.")
    schedule: str | None = Field(
        None,
        description="Cron expression for scheduled releases, e.g. `0 2 * * *` (02:00 every day), in `timezone`. "
        "No catch-up. A scheduled run that finds the same model, spec and data as production ends as `no-change`.",
    )
    timezone: str = Field("UTC", description="IANA timezone of `schedule`, e.g. `Europe/Paris`.")
    trigger_on: str | None = Field(
        None,
        description="Asset URI; each new event of it (e.g. from `data_refresh__<name>`) triggers a release, "
        "e.g. `model-delivery://data/breast_cancer`.",
    )
    notify_conn_id: str | None = Field(
        None,
        description="Airflow http connection of a webhook told of every failed, rejected or rolled-back "
        "release (default: MODEL_DELIVERY_NOTIFY_CONN_ID; none: no notification).",
    )
    approval: Literal["none", "required"] = Field(
        "none",
        description="`required`: a person must approve in Airflow (Required Actions) after the smoke test and "
        "before production traffic moves. A rejection, or no answer in time, stops the release.",
    )
    approval_timeout_minutes: float = Field(
        240.0, gt=0, le=10080, description="How long the approval may wait; no answer in time stops the release."
    )
    approval_allow_self: bool = Field(
        False, description="Accept an approval from the user who triggered the run. By default another person must "
        "approve: the triggering user's approval is refused (and recorded) and the request waits on for someone "
        "else; anyone may reject."
    )
    security: SecuritySpec = Field(
        default_factory=SecuritySpec,  # type: ignore[arg-type]
        description="Guards against untrusted model files: `pickle_scan`.",
    )
    signing: SigningSpec = Field(
        default_factory=SigningSpec,  # type: ignore[arg-type]
        description="Artifact signatures: `required`, `optional` or `off` (the default), or a mapping; see "
        "docs/ARCHITECTURE.md (Signing).",
    )

    @field_validator("signing", mode="before")
    @classmethod
    def _signing_shorthand(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value[:80]!r} is not a cron expression (five fields, e.g. '0 2 * * *')")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
            raise ValueError(f"{value[:80]!r} is not an IANA timezone (e.g. 'UTC', 'Europe/Paris')") from None
        return value

    @field_validator("trigger_on")
    @classmethod
    def _asset_uri(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(f"{value[:80]!r} is not an asset URI (scheme://path, e.g. 'model-delivery://data/<name>')")
        return value

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not tag or len(tag) > 100:
                raise ValueError("each tag must be 1 to 100 characters")
        return tags

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        allowed = TASK_METRICS[self.task]
        unknown = [m for m in self.evaluation.metrics if m not in allowed]
        if unknown:
            raise _FieldError(
                "evaluation.metrics",
                f"evaluation.metrics has {unknown} which a {self.task} model does not have; use {list(allowed)}"
            )
        gated = [*self.gate.thresholds, *self.gate.no_regression]
        gated += [m for gate_slice in self.gate.slices for m in gate_slice.thresholds]
        unmeasured = sorted({m for m in gated if m not in self.evaluation.metrics})
        if unmeasured:
            raise _FieldError(
                f"gate.thresholds.{unmeasured[0]}",
                f"the gate names {unmeasured} which evaluation.metrics does not compute; "
                "add them to evaluation.metrics or remove them from the gate"
            )
        from model_delivery.runtimes import get_runtime

        runtime = get_runtime(self.serving.runtime)
        protocol = runtime.protocol
        if (self.task == "language-model") != (protocol == "openai"):
            fix = ("use serving.runtime vllm" if self.task == "language-model"
                   else "use task language-model, or serving.runtime model_server")
            raise _FieldError("serving.runtime", f"task {self.task!r} cannot be served by runtime "
                              f"{self.serving.runtime!r} (it speaks {protocol}). Fix: {fix}")
        self._check_grpc(protocol)
        if self.task == "language-model" and self.gate.slices:
            raise _FieldError("gate.slices", "gate.slices judge the rows of a table; a language model is judged "
                              "on its held-out blocks as a whole. Fix: remove gate.slices")
        k8s = self.deploy.kubernetes
        token_secret = k8s.token_secret if self.deploy.target == "kubernetes" and k8s else None
        if self.serving.token_conn_id and self.deploy.target == "kubernetes" and not token_secret:
            raise _FieldError("deploy.kubernetes.token_secret", "serving.token_conn_id asks for authentication, and "
                              "the pods read their token from a Secret. Fix: create a Secret with key 'token' (the "
                              "connection's password) and name it in deploy.kubernetes.token_secret")
        if token_secret and not self.serving.token_conn_id:
            raise _FieldError("serving.token_conn_id", "deploy.kubernetes.token_secret makes the servers require a "
                              "token, which the smoke test and verify read from an Airflow connection. Fix: name that "
                              "connection (the same token as its password) in serving.token_conn_id")
        if self.deploy.target == "kubernetes" and k8s and k8s.model_image and self.signing.mode == "required":
            raise _FieldError("deploy.kubernetes.model_image", "signing is required, but an image with the weights "
                              "baked in has no init container, so nothing in the pod would check the signature. Fix: "
                              "deploy from the store (image plus artifact_fetch), or sign and verify the image with "
                              "your registry's tooling and set signing to optional or off")
        if self.deploy.target == "kubernetes" and k8s and not (k8s.image or k8s.model_image or runtime.image):
            raise _FieldError("deploy.kubernetes.image", "the kubernetes target needs 'image' (the serving image) or "
                              "'model_image'. Fix: name the image that runs python -m model_server")
        return self

    def _check_grpc(self, protocol: str) -> None:
        """``serving.grpc`` and ``smoke.protocol: grpc`` only for a runtime of the Open Inference Protocol, the
        second only with the first, and the local target's gRPC front port with ``serving.grpc`` only."""
        runtime = self.serving.runtime
        if self.smoke.protocol == "grpc" and protocol != "open-inference":
            raise _FieldError("smoke.protocol", f"smoke.protocol grpc sends the Open Inference Protocol over gRPC, but "
                              f"runtime {runtime!r} speaks {protocol}. Fix: use smoke.protocol rest")
        if self.serving.grpc and protocol != "open-inference":
            raise _FieldError("serving.grpc", f"runtime {runtime!r} speaks {protocol} over HTTP only; gRPC is served "
                              "by the model_server runtime. Fix: set serving.grpc false (or remove it)")
        if self.smoke.protocol == "grpc" and not self.serving.grpc:
            raise _FieldError("smoke.protocol", "smoke.protocol grpc needs servers that speak gRPC. Fix: set "
                              "serving.grpc: true, or use smoke.protocol rest")
        local = self.deploy.local
        if self.deploy.target == "local" and local is not None:
            if self.serving.grpc and local.grpc_port is None:
                raise _FieldError("deploy.local.grpc_port", "serving.grpc is true, and the local front needs a stable "
                                  "port for gRPC clients. Fix: set deploy.local.grpc_port to a free port (not "
                                  "deploy.local.port)")
            if local.grpc_port is not None and not self.serving.grpc:
                raise _FieldError("deploy.local.grpc_port", "deploy.local.grpc_port is set but serving.grpc is false, "
                                  "so no server would answer on it. Fix: set serving.grpc: true, or remove "
                                  "deploy.local.grpc_port")
        ansible = self.deploy.ansible
        if self.deploy.target == "ansible" and ansible is not None and self.serving.grpc \
                and ansible.load_balancer.grpc_front is None:
            raise _FieldError("deploy.ansible.load_balancer.grpc_front", "serving.grpc is true, and verify sends its "
                              "golden requests through the load balancer's gRPC frontend. Fix: set "
                              "deploy.ansible.load_balancer.grpc_front to its host:port")

    @property
    def dag_id(self) -> str:
        """The release DAG's id."""
        return f"release__{self.name}"


_FIX_HINTS = {
    "missing": "add it",
    "extra_forbidden": "remove it or fix its spelling",
    "literal_error": "use one of the allowed values",
    "string_pattern_mismatch": "use lowercase letters, digits and underscores, starting with a letter",
    "float_parsing": "use a number, e.g. 0.9",
    "float_type": "use a number, e.g. 0.9",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "string_type": "use a string",
    "list_type": "use a YAML list, e.g. [a, b]",
    "dict_type": "use a YAML mapping of fields",
    "model_type": "use a YAML mapping of fields",
    "model_attributes_type": "use a YAML mapping of fields",
    "greater_than_equal": "use a value within the allowed range",
    "less_than_equal": "use a value within the allowed range",
    "greater_than": "use a value within the allowed range",
    "too_short": "give at least one entry",
    "string_too_short": "give a non-empty value",
    "value_error": "see the message",
}


def _describe(loc: tuple[Any, ...]) -> str:
    """Return the documentation of the field at ``loc``, if it is a declared field."""
    model: Any = ModelSpec
    description = ""
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return description
        info = fields[part]
        description = info.description or ""
        model = info.annotation
        args = getattr(model, "__args__", ())
        model = next((a for a in args if hasattr(a, "model_fields")), model)
    return description


def format_validation_error(path: Path, error: ValidationError) -> str:
    """Turn a pydantic error into lines naming the file, the field and the fix."""
    lines = [f"{path}: invalid model spec ({error.error_count()} problem(s))"]
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not str(p).startswith("function-"))
        cross = (item.get("ctx") or {}).get("error")
        named = not loc and isinstance(cross, _FieldError)
        if not loc and isinstance(cross, _FieldError):
            loc = tuple(cross.field.split("."))
        field = _clip(".".join(str(p) for p in loc)) or "(top level)"
        hint = _FIX_HINTS.get(item["type"], "correct the value")
        doc = _describe(loc)
        got = f" (got {_clip(repr(item['input']))})" if item["type"] not in ("missing",) and loc and not named else ""
        lines.append(f"  - field '{field}': {_clip(item['msg'])}{got}. Fix: {hint}." + (f" Field: {doc}" if doc else ""))
        if len(lines) > MAX_ERRORS:
            lines.append(f"  - ... and {error.error_count() - MAX_ERRORS} more")
            break
    return "\n".join(lines)


MAX_SPEC_BYTES = 256 * 1024
"""A model.yaml larger than this is refused before it is parsed."""
MAX_ERRORS = 20
MAX_ECHO = 200
"""Characters of a bad value echoed in an error: one bad spec must not bloat the DAG's import error."""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ECHO else f"{text[:MAX_ECHO]}... ({len(text)} characters)"


class _SpecLoader(yaml.SafeLoader):
    """YAML without aliases: an alias can expand a 1 kB file into gigabytes (a "billion laughs" bomb)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{str(event.anchor)[:40]}) are not allowed in a model spec", event.start_mark)
        return super().compose_node(parent, index)


def _inside(model_dir: Path, rel: str) -> bool:
    """Whether ``rel`` names a file inside ``model_dir``, symlinks resolved."""
    if not rel or "\0" in rel or Path(rel).is_absolute():
        return False
    root = model_dir.resolve()
    try:
        return (root / rel).resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a name too long, a symlink loop
        return False


def _read_yaml(path: Path, model_dir: Path) -> dict[Any, Any]:
    """The spec file as a YAML mapping: bounded in size, without aliases, not nested without end."""
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise InvalidModelSpec(f"{path}: {size} bytes, more than a model spec may have ({MAX_SPEC_BYTES}). "
                                   "Fix: keep data out of model.yaml (reference data and golden requests are files).")
        raw = yaml.load(path.read_bytes(), Loader=_SpecLoader)  # noqa: S506 - a SafeLoader without aliases
    except FileNotFoundError:
        raise InvalidModelSpec(f"{path}: not found. Fix: add a {SPEC_FILE} to {model_dir}.") from None
    except yaml.YAMLError as exc:
        raise InvalidModelSpec(f"{path}: not valid YAML: {_clip(str(exc))}. Fix: correct the syntax, and write "
                               "each value out instead of using anchors and aliases.") from None
    except RecursionError:
        raise InvalidModelSpec(f"{path}: not valid YAML: nested too deeply. Fix: a model spec is a few levels of "
                               "mappings and lists (see docs/model-spec.md).") from None
    if not isinstance(raw, dict):
        raise InvalidModelSpec(
            f"{path}: must be a YAML mapping of fields, got {type(raw).__name__}. "
            "Fix: write one `field: value` per top-level field (see docs/model-spec.md)."
        )
    return raw


def _check_files(spec: ModelSpec, model_dir: Path, path: Path) -> None:
    """Every file the spec names exists inside the model folder (symlinks resolved)."""
    named = (
        ("build.entrypoint", spec.build.entrypoint),
        ("smoke.golden", spec.smoke.golden),
        ("validation.suite", spec.validation.suite),
        ("validation.reference", spec.validation.reference),
        *((f"signing.{key}", rel) for key, rel in (("public_key", spec.signing.public_key),
                                                   ("certificate_chain", spec.signing.certificate_chain)) if rel),
    )
    for field, rel in named:
        if not _inside(model_dir, rel):
            raise InvalidModelSpec(
                f"{path}: field '{field}' names {_clip(repr(rel))}, which is outside the model folder {model_dir}. "
                "Fix: name a file inside the model folder, by a relative path (no '..' out of it, no absolute path, "
                "no symlink that leads out)."
            )
        try:
            present = (model_dir / rel).is_file()
        except OSError as exc:  # a name longer than the filesystem allows (pathlib raises only for such errors)
            raise InvalidModelSpec(
                f"{path}: field '{field}' names {_clip(repr(rel))}, which cannot name a file ({exc.strerror}). "
                "Fix: name a file inside the model folder, by a relative path."
            ) from None
        if not present:
            raise InvalidModelSpec(
                f"{path}: field '{field}' names {_clip(repr(rel))}, which does not exist in {model_dir}. "
                "Fix: add the file or correct the name."
            )


def load_spec(model_dir: Path) -> ModelSpec:
    """Load and validate ``model_dir/model.yaml``, checking the files it names exist and the golden file's form.

    :raises InvalidModelSpec: with a message naming the file, the field and the fix.
    """
    path = model_dir / SPEC_FILE
    raw = _read_yaml(path, model_dir)
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidModelSpec(format_validation_error(path, exc)) from None
    except RecursionError:
        raise InvalidModelSpec(f"{path}: a value is nested too deeply. Fix: a model spec is a few levels of "
                               "mappings and lists (see docs/model-spec.md).") from None
    if spec.name != model_dir.name:
        raise InvalidModelSpec(
            f"{path}: field 'name' is {spec.name!r} but the folder is {model_dir.name!r}. "
            "Fix: make them equal (the folder name is the model's identity)."
        )
    _check_files(spec, model_dir, path)
    check_golden(spec, model_dir)
    return spec


MAX_GOLDEN_BYTES = 4 * 1024 * 1024
"""A golden file larger than this is refused before it is read: golden requests are a handful of cases."""
GOLDEN_FORMS = {
    "language-model": ("a JSON list of {name, prompt, max_tokens, expect}, expect taking contains, regex, equals, "
                       "min_length or max_length (see docs/llm.md)"),
    "table": ("a JSON list of {name, inputs, expect}, each input {name, datatype, shape, data} and expect "
              "{output, equals|allclose|one_of|shape} (see docs/model-spec.md, Golden requests)"),
}


def check_golden(spec: ModelSpec, model_dir: Path) -> list[Any]:
    """Read ``smoke.golden`` as the smoke stage will (golden prompts for a language model), at parse.

    :return: the golden cases.
    :raises InvalidModelSpec: naming ``smoke.golden``, the file, what is wrong and the fix.
    """
    from model_delivery.smoke import load_golden
    from model_delivery.smoke_lm import load_golden_prompts

    path = model_dir / spec.smoke.golden
    form = GOLDEN_FORMS["language-model" if spec.task == "language-model" else "table"]

    def refuse(problem: str) -> InvalidModelSpec:
        return InvalidModelSpec(f"{model_dir / SPEC_FILE}: field 'smoke.golden' names {spec.smoke.golden!r}, "
                                f"which is not valid golden {'prompts' if spec.task == 'language-model' else 'requests'}"
                                f": {_clip(problem.rstrip('.'))}. Fix: make {path} {form}.")

    size = path.stat().st_size
    if size > MAX_GOLDEN_BYTES:
        raise refuse(f"{size} bytes, more than a golden file may have ({MAX_GOLDEN_BYTES})")
    try:
        if spec.task == "language-model":
            return list(load_golden_prompts(path))
        return list(load_golden(path))
    except InvalidModelSpec as exc:
        raise refuse(str(exc).removeprefix(f"{path}: ")) from None
    except RecursionError:
        raise refuse("nested too deeply") from None


WILDCARD_HOSTS = ("", "0.0.0.0", "::", "*")  # noqa: S104 - names of the wildcard address, not a bind
LOOPBACK = ("127.0.0.1", "localhost")


def claimed_ports(spec: ModelSpec) -> list[tuple[str, str, int]]:
    """The fixed ports the spec's deploy target claims on a machine: ``(field, host, port)``.

    Only the local target binds fixed ports on a shared machine (its front, ``deploy.local.port``, and with
    ``serving.grpc`` its gRPC front, ``deploy.local.grpc_port``); an Ansible
    host's ports are the inventory's, and a Kubernetes Service's port is its own per model.
    """
    local = spec.deploy.local
    if spec.deploy.target == "local" and local is not None:
        ports = [("deploy.local.port", local.host, local.port)]
        if local.grpc_port is not None:
            ports.append(("deploy.local.grpc_port", local.host, local.grpc_port))
        return ports
    return []


def _same_address(a: str, b: str) -> bool:
    return a == b or a in WILDCARD_HOSTS or b in WILDCARD_HOSTS or {a, b} <= set(LOOPBACK)


def check_port_clashes(spec: ModelSpec, model_dir: Path, others: Iterable[ModelSpec]) -> None:
    """Refuse a spec that claims a fixed port another model's spec claims too (two fronts cannot share one).

    :param others: every model's spec (``discover_specs``); ``spec`` itself among them is skipped.
    :raises InvalidModelSpec: naming both models, the field and the fix.
    """
    for field, host, port in claimed_ports(spec):
        for other in others:
            if other.name == spec.name:
                continue
            for other_field, other_host, other_port in claimed_ports(other):
                if port == other_port and _same_address(host, other_host):
                    raise InvalidModelSpec(
                        f"{model_dir / SPEC_FILE}: field '{field}' is {port} on {host}, which model "
                        f"{other.name!r} claims too ({other_field}: {other_port} on {other_host}); the second front "
                        f"to start would fail, or take the other model's traffic. Fix: give one of {spec.name!r} "
                        f"and {other.name!r} another free port in its model.yaml.")


def discover_specs(models_dir: Path) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """Load every model folder under ``models_dir``.

    :return: the valid specs by name, and an error message by folder name for the broken ones.
    """
    specs: dict[str, ModelSpec] = {}
    errors: dict[str, str] = {}
    if not models_dir.is_dir():
        return specs, errors
    for model_dir in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if not re.match(NAME_PATTERN, model_dir.name):
            errors[model_dir.name] = (
                f"{model_dir}: folder name is not a valid model name. Fix: rename it to match {NAME_PATTERN}."
            )
            continue
        try:
            specs[model_dir.name] = load_spec(model_dir)
        except InvalidModelSpec as exc:
            errors[model_dir.name] = str(exc)
    return specs, errors


DOCS_TAIL = """
A threshold is `{min: <float>, max: <float>}` with at least one bound.

## The build contract

The entrypoint runs as its own process, in a fresh working directory holding a copy of
the model folder, with the declared build environment (no Airflow variables, connections
or secrets; see below), as:

    python <entrypoint> --output-dir OUT --params '<build.params as JSON>'

It must write:

- `OUT/model/`: the artifact. It holds `serving.json` and the model files. `serving.json`
  names the flavor (`sklearn`: a joblib file), the model file, the inputs (name,
  datatype, shape, optional `columns`) and the outputs (`predict`, `predict_proba`).
- `OUT/data/train.csv` or `OUT/data/train.parquet`: the data it trained on.
- `OUT/data/eval.csv` or `OUT/data/eval.parquet`: the held-out data the candidate is
  evaluated on (with the `evaluation.label` column; for a language model, a `text` column
  of string blocks).

`serving.json` is checked against the spec right after the entrypoint ends, before anything
is stored: its `name` must be the spec's `name`, and for the `model_server` runtime it must
be valid for the server, list the input's `columns`, take the input (name, number of
features) that the golden requests send, and declare every output they check, `predict`,
and `predict_proba` when `roc_auc` or `log_loss` is measured. A mismatch fails the build
naming the field (no retries: a rebuild would write the same).

Each data set is exactly one file, CSV or Parquet; the two sets may differ in format. A
build that writes both files of a set, or neither, fails and names them. The release stores
each file with its sha256 and its format (`artifact.data.<set>`: `uri`, `sha256`,
`size_bytes`, `format`), and `validate_data` and `evaluate` (the candidate, and production
measured again on the same rows) read the format recorded there. Parquet is read in bounded
batches by `validate_data`; `evaluate` reads the evaluation set whole, as it does a CSV.

The artifact is stored by digest: the sha256 of a manifest listing every file's sha256
and size.

## Reproducible builds

Every kind of build (a process on the worker, `build.container` with `runner: docker` or
`runner: kubernetes`) starts the entrypoint through the same launcher,
`include/build/launch.py`, with the same environment, declared once in
`model_delivery/build_env.py`:

- **Passed through** from the machine the build runs on, when set there: `PATH`, `LANG`,
  `LC_ALL`, `TZ`, `SSL_CERT_FILE`, `LD_LIBRARY_PATH`, `OPENBLAS_CORETYPE`,
  `OPENBLAS_L2_SIZE`, `CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES`; `HOME` and `TMPDIR`
  are the runner's scratch directory.
- **Fixed**: every BLAS and OpenMP thread count (`OMP_NUM_THREADS`,
  `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`, `BLIS_NUM_THREADS`, `VECLIB_MAXIMUM_THREADS`,
  `NUMEXPR_NUM_THREADS`) is `build.threads` (default 1, never the machine's core count);
  `PYTHONHASHSEED` and `MODEL_DELIVERY_SEED` are `build.seed` (default 0); then
  `build.env`.

Nothing else reaches the entrypoint: a build pod's store credentials stay with the launcher,
which uploads the outputs. After the build, the launcher probes, with the build's own Python
and environment, what the build ran on: the Python version and machine, the versions of the
key libraries (numpy, scipy, scikit-learn, torch, transformers, ...), and each BLAS library
with its kernel (`architecture`, e.g. `Haswell`) and thread count. The release record keeps
it (`artifact.build_env`), the report shows it ("Built on"), and the registry version carries
`build.python`, `build.blas` and `build.threads` tags.

What is promised: the same declared environment on the same kind of machine gives the same
bytes, and so the same digest, whichever runner built it. It is not promised across machines
whose BLAS picks another kernel (OpenBLAS picks by CPU, or by `OPENBLAS_CORETYPE`): floating
point sums then run in another order, so the bytes may differ, while the predictions agree
within floating-point tolerance. Where identical bytes across machines matter, pin the
kernel in `build.env` (for example `OPENBLAS_CORETYPE: Haswell` on x86_64 with AVX2).

## Golden requests

`smoke.golden` is a JSON list of cases, sent to the staged candidate (`smoke`) and, after
the traffic shift, through the production address (`verify`):

```json
[{"name": "a clear benign example",
  "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 30], "data": [...]}],
  "expect": {"output": "predict", "equals": [1], "shape": [1]}}]
```

`expect` takes `output` and any of `equals` (exact values), `allclose` (with `atol`),
`one_of` (every value must be one of these) and `shape`. Every answer must also come from
the candidate's digest (the `X-Model-Digest` header), and the p95 latency over
`smoke.repeats` rounds must be within `smoke.latency_budget_ms`.

With `smoke.protocol: grpc` (and `serving.grpc: true`) the same cases go over gRPC
(`inference.GRPCInferenceService/ModelInfer`, the inputs as raw contents) to the deployment's
gRPC address: the candidate's gRPC port for `smoke`, the target's gRPC front for `verify`
(`deploy.local.grpc_port`, `deploy.ansible.load_balancer.grpc_front`, the Service port `grpc`).
Each answer is turned into the JSON body REST gives (outputs with `name`, `datatype`, `shape`,
flat `data`) and checked by the same rules; the digest is the `x-model-digest` trailing
metadata. The stage's record says `protocol: grpc` and `url: grpc://host:port`.

The golden file is read when the spec loads (at most 4 MiB), as the smoke stage will read
it: a malformed file makes the spec invalid, naming `smoke.golden`, the case and its field,
so the model's DAG does not load (the other models' DAGs do).

## Fixed ports

Two models must not claim the same fixed port on one machine: with the `local` target, each
model's `deploy.local.port`, and its `deploy.local.grpc_port` with `serving.grpc` (on the same
`deploy.local.host`, a wildcard address overlapping every other) is its own. Each spec alone is valid, so both DAGs load; the build task refuses
a release of either in its first seconds, naming both models, until one moves to another
port.
"""


def spec_docs() -> str:
    """Render the field reference of ModelSpec as markdown (docs/model-spec.md)."""
    out = [
        "# Model spec reference",
        "",
        "Generated by `python -m model_delivery.spec` from `plugins/model_delivery/spec.py`;",
        f"a test keeps it current. File: `include/models/<name>/{SPEC_FILE}`.",
        "",
    ]

    def walk(model: Any, prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            nested = next(
                (a for a in (annotation, *getattr(annotation, "__args__", ())) if hasattr(a, "model_fields")), None
            )
            is_section = nested is not None and nested is not Threshold
            if info.is_required():
                note = "required section" if is_section else "required"
            elif is_section:
                note = "optional section"
            else:
                note = f"default `{info.get_default(call_default_factory=True)!r}`"
            out.append(f"- `{prefix}{name}` ({note}): {info.description}")
            if is_section:
                walk(nested, f"{prefix}{name}.")

    walk(ModelSpec, "")
    return "\n".join(out) + "\n" + DOCS_TAIL


if __name__ == "__main__":  # pragma: no cover
    print(spec_docs())
