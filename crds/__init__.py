"""Shoal's API types (group shoal.dev, version v1alpha1): the single source of truth for the CRDs.

Imports nothing from other Shoal packages but the router's settings models (the Router spec is
``shoal.router.config.RouterSettings`` plus Kubernetes fields); ``python -m shoal.crds.generate``
writes the CRD YAML.
"""

from shoal.crds.agentprogram import AgentProgram, AgentProgramSpec, AgentProgramStatus
from shoal.crds.common import (
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    ConditionStatus,
    ConditionType,
    Reason,
    explain,
)
from shoal.crds.modelpool import ModelPool, ModelPoolSpec, ModelPoolStatus, ModelUri, parse_model_uri
from shoal.crds.router import Router, RouterSpec, RouterStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "AgentProgram",
    "AgentProgramSpec",
    "AgentProgramStatus",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "ModelPool",
    "ModelPoolSpec",
    "ModelPoolStatus",
    "ModelUri",
    "Reason",
    "Router",
    "RouterSpec",
    "RouterStatus",
    "explain",
    "parse_model_uri",
]
