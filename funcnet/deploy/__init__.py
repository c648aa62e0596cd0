"""Deploying a trained model without its code.

``funcnet export RUN_DIR -o ARTEFACT`` writes an artefact (``funcnet.deploy.artefact``: programs serialised
with ``jax.export``, the weights as plain arrays, a manifest). ``funcnet.deploy.load(ARTEFACT)`` runs it
anywhere JAX runs, with no model code: this package imports only jax, numpy and funcnet's tree parsing
and scheduling, not ``funcnet.layers``, ``funcnet.train``, ``funcnet.experiments``, optax or orbax.

>>> import funcnet.deploy as deploy  # doctest: +SKIP
>>> artefact = deploy.load("artefacts/iris")  # doctest: +SKIP
>>> artefact.predict([[5.0, 3.4, 1.5]])  # doctest: +SKIP
[{'prediction': [0.21...]}]
"""

from .artefact import Artefact as Artefact
from .artefact import ArtefactError as ArtefactError
from .artefact import load as load
from .requests import RequestError as RequestError
from .requests import predict_lines as predict_lines

__all__ = ["Artefact", "ArtefactError", "RequestError", "load", "predict_lines"]
