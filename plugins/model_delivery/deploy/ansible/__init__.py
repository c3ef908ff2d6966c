"""The ``ansible`` deploy target: a rolling update of a fleet of hosts behind HAProxy.

``target``  ``AnsibleTarget``: runs the playbooks of ``include/ansible`` and keeps what they did
``spec``    ``AnsibleTargetSpec``: the ``deploy.ansible`` section of model.yaml
"""
