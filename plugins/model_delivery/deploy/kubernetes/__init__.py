"""The ``kubernetes`` deploy target: a rolling Deployment, staged or canaried first.

``target``     ``KubernetesTarget`` (and ``render``, the objects for review or GitOps)
``spec``       ``KubernetesTargetSpec``: the ``deploy.kubernetes`` section of model.yaml (pydantic only)
``manifests``  the objects, as dicts, from the spec (pure)
``rollout``    the rollout state machine (pure) and ``RolloutPending``
``client``     server-side apply, reads and deletes through the provider's KubernetesHook
``trigger``    ``RolloutTrigger``: the deferred rollout wait
``records``    what was applied, per version, in the artifact store (rollback reads it)
``canary``     the canary's error-ratio check

Container builds (``build.container``) are ``model_delivery.container_build``.
"""
