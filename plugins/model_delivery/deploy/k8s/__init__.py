"""The parts of the ``kubernetes`` deploy target (the target itself is ``model_delivery.deploy.kubernetes``).

``manifests``  the objects, as dicts, from the spec (pure)
``rollout``    the rollout state machine (pure) and ``RolloutPending``
``client``     server-side apply, reads and deletes through the provider's KubernetesHook
``trigger``    ``RolloutTrigger``: the deferred rollout wait
``records``    what was applied, per version, in the artifact store (rollback reads it)
``canary``     the canary's error-ratio check
``build``      container builds through KubernetesPodOperator or DockerOperator
"""
