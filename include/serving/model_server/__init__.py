"""The model server: serves one verified model artifact over the Open Inference Protocol v2.

Submodules:

* :mod:`model_server.manifest` -- artifact digests and verification (standard library only);
* :mod:`model_server.flavors` -- loading a model from an artifact directory;
* :mod:`model_server.app` -- the FastAPI application (``/v2`` endpoints and ``/metrics``);
* :mod:`model_server.front` -- a stable-address TCP proxy for blue-green switching (standard library only);
* ``python -m model_server`` -- verify an artifact, then serve it.

This package ``__init__`` imports nothing, so importing :mod:`model_server.manifest` or
:mod:`model_server.front` stays cheap on hosts without the serving dependencies.
"""

from __future__ import annotations

__version__ = "0.1.0"
