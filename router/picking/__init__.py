"""Endpoint picking, modelled on the Gateway API inference extension's endpoint picker.

A pick runs ``Filter.filter`` plugins in order, then every ``Scorer.score`` (each
returns a score per endpoint; the runner clamps to [0, 1] and weights them), then one
``Picker.pick``. Plugins are built from config through ``registry``.
"""

from shoal.router.picking.types import Candidate, EndpointMetrics, PickRequest, Scored

__all__ = ["Candidate", "EndpointMetrics", "PickRequest", "Scored"]
