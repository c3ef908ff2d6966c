"""The ``local`` deploy target: blue-green on this machine.

``target``  ``LocalTarget``: one server process per version behind a stable front port
``spec``    ``LocalTargetSpec``: the ``deploy.local`` section of model.yaml
"""
