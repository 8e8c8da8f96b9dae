"""ModelPool: a set of identical engine replicas serving one model."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from shoal.crds.cel import CelRule, has_key
from shoal.crds.common import ApiModel, Condition, Reason, ResourceRequirements, Toleration, spec_error
from shoal.crds.common import SecretKeyRef as SecretKeyRef
from shoal.crds.model_source import BUNDLED_MODELS as BUNDLED_MODELS
from shoal.crds.model_source import MODEL_SCHEMES as MODEL_SCHEMES
from shoal.crds.model_source import ModelSource
from shoal.crds.model_source import ModelUri as ModelUri
from shoal.crds.model_source import parse_model_uri as parse_model_uri
from shoal.crds.pod import LocalObjectReference, PodSettings

GPU_RESOURCE = "nvidia.com/gpu"
MAX_GPUS = 1
"""GPUs one replica can use: the engine has no tensor parallelism yet."""


_LIMITS = "self.resources.limits"
_GPU_LIMIT = f"string({_LIMITS}['{GPU_RESOURCE}'])"
_HAS_GPU_LIMIT = has_key(_LIMITS, GPU_RESOURCE)
_GPU_REQUEST = f"string(self.resources.requests['{GPU_RESOURCE}'])"
_HAS_GPU_REQUEST = has_key("self.resources.requests", GPU_RESOURCE)


def _device_is(device: str) -> str:
    return f"has(self.engine) && has(self.engine.device) && self.engine.device == '{device}'"


class Dtype(StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Kernels(StrEnum):
    TORCH = "torch"
    TRITON = "triton"


class Speculation(ApiModel):
    """Lossless speculative decoding: drafted tokens are verified in the same forward pass, so
    outputs do not change; decoding speeds up when outputs repeat text the engine has seen."""

    method: Literal["trie", "draft"] = "trie"
    """trie: n-grams of the request's own prompt and output plus a trie learned from all traffic.
    draft (a smaller draft model) is not supported: the pool is Degraded (FeatureNotSupported)."""
    num_speculative_tokens: Annotated[int, Field(ge=1, le=63)] = 8
    """Most drafted tokens verified per sequence per step (the engine adapts below it to acceptance)."""
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 8
    """No speculation once more sequences than this decode in one step (the step is compute-bound)."""
    global_trie_nodes: Annotated[int, Field(ge=0, le=100_000_000)] = 200_000
    """Memory bound of the trie learned from traffic, in nodes (0: each request's own text only)."""


class EngineAuth(ApiModel):
    """The engines' own API key: every path but /health and /metrics then needs it. Routers that
    serve the pool get the same Secret as their upstream credential."""

    api_key_secret_ref: SecretKeyRef
    """Secret key holding the engines' API key."""


class EngineSettings(ApiModel):
    """Settings of each engine replica (flags of ``python -m shoal.engine serve``)."""

    block_size: Literal[8, 16, 32, 64, 128] = 16
    """Tokens per KV-cache block."""
    max_num_batched_tokens: Annotated[int, Field(ge=16, le=1_048_576)] | None = None
    """Token budget of one engine step (decodes first, prompt chunks fill the rest); empty:
    the engine sizes it from the cores its container may use (1024 per core, 1024-8192)."""
    max_num_seqs: Annotated[int, Field(ge=1, le=4096)] = 128
    """Most sequences running at once."""
    max_model_len: Annotated[int, Field(ge=2, le=1_048_576)] | None = None
    """Longest prompt + output in tokens; defaults to the model's context length."""
    kv_cache_memory_gb: Annotated[float, Field(gt=0, le=1024)] | None = None
    """Memory reserved for the paged KV cache, in GiB; empty: the engine sizes it (CPU: 10% of
    the memory its container has available, at most 2 GiB; GPU: 85% of what is free after the
    model loads)."""
    prefix_caching: bool = True
    """Reuse KV blocks across requests that share a prefix."""
    dtype: Dtype = Dtype.AUTO
    """Weights/activations dtype; auto is float32 on CPU and bfloat16 on GPU."""
    device: Device = Device.AUTO
    """cpu, cuda, or auto (cuda when the pool requests nvidia.com/gpu)."""
    kernels: Kernels | None = None
    """Kernel backend; empty picks by device (torch on CPU, triton on GPU)."""
    max_waiting_requests: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Most requests a replica holds without a first token; past it, HTTP 429 + Retry-After
    (empty: the engine default)."""
    speculation: Speculation | None = None
    """Lossless speculative decoding (empty: off)."""
    auth: EngineAuth | None = None
    """Require an API key on the engines (empty: keyless engines, reachable by anything in the cluster)."""
    drain_timeout_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    """On shutdown, running requests get this long to finish (new ones get 503); the pod's
    termination grace period is set to cover it."""


class Autoscaling(ApiModel):
    """Scale replicas on the engines' queue depth (vllm:num_requests_waiting per replica)."""

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Fewest replicas. 0 lets an idle pool scale to zero: routers hold its requests while it
    scales back up (see scaleToZeroAfterSeconds)."""
    max_replicas: Annotated[int, Field(ge=1, le=1000)]
    """Most replicas."""
    target_waiting_requests: Annotated[float, Field(gt=0, le=10000)] = 4.0
    """Average waiting requests per replica the autoscaler aims for."""
    scale_down_stabilization_seconds: Annotated[int, Field(ge=0, le=3600)] = 300
    """How long load must stay low before scaling down."""
    prometheus_address: str = "http://prometheus-server.monitoring.svc:9090"
    """Prometheus the KEDA trigger queries (used only when KEDA is installed; else an HPA on the
    custom metrics API is created)."""
    scale_to_zero_after_seconds: Annotated[int, Field(ge=10, le=86400)] | None = None
    """With minReplicas 0: how long no request may reach the pool through any of its routers
    before it is scaled to zero (empty: 300). Only valid with minReplicas 0."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
            "minReplicas must not exceed maxReplicas",
            Reason.AUTOSCALING_INVALID,
            ".minReplicas",
        ),
        CelRule(
            "!has(self.scaleToZeroAfterSeconds) || (has(self.minReplicas) && self.minReplicas == 0)",
            "scaleToZeroAfterSeconds needs minReplicas 0",
            Reason.AUTOSCALING_INVALID,
            ".scaleToZeroAfterSeconds",
        ),
    )

    @model_validator(mode="after")
    def _idle_time_needs_zero(self) -> Autoscaling:
        if self.scale_to_zero_after_seconds is not None and self.min_replicas != 0:
            message = f"autoscaling.scaleToZeroAfterSeconds needs minReplicas 0 (it is {self.min_replicas})"
            raise spec_error(Reason.AUTOSCALING_INVALID, message)
        return self

    @property
    def idle_seconds(self) -> int:
        """Seconds without requests before a minReplicas-0 pool scales to zero."""
        return self.scale_to_zero_after_seconds or 300


class Adapter(ApiModel):
    """A LoRA adapter. Not supported yet: a pool that lists adapters is Degraded (FeatureNotSupported)."""

    name: Annotated[str, Field(min_length=1)]
    """Adapter name in the OpenAI API."""
    uri: Annotated[str, Field(min_length=1)]
    """Adapter location."""


class ModelPoolSpec(ApiModel):
    """Desired state of a ModelPool."""

    model: ModelSource
    """The model this pool serves."""
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Engine replicas (the scale subresource; written by the autoscaler when autoscaling is set)."""
    autoscaling: Autoscaling | None = None
    """Scale on queue depth between minReplicas and maxReplicas instead of a fixed count."""
    engine: Annotated[EngineSettings, Field(json_schema_extra={"default": {}})] = EngineSettings()
    """Engine settings shared by every replica."""
    resources: ResourceRequirements | None = None
    """Resources of each engine container (cpu, memory, nvidia.com/gpu)."""
    image: Annotated[str, Field(min_length=1)] | None = None
    """Engine image; empty uses the operator's default."""
    image_pull_secrets: Annotated[list[LocalObjectReference], Field(max_length=16)] | None = None
    """Secrets (type kubernetes.io/dockerconfigjson, same namespace) to pull the engine image with."""
    pod: PodSettings | None = None
    """Passed through to every engine pod: env, annotations, affinity, priorityClassName."""
    node_selector: dict[str, str] | None = None
    """Node labels the replicas must run on."""
    tolerations: list[Toleration] | None = None
    """Taints the replicas tolerate."""
    adapters: list[Adapter] | None = None
    """LoRA adapters. Not supported yet: setting it makes the pool Degraded (FeatureNotSupported)."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "!has(self.adapters) || size(self.adapters) == 0",
            "adapters: LoRA adapters are not supported yet",
            Reason.FEATURE_NOT_SUPPORTED,
            ".adapters",
        ),
        CelRule(
            f"!({_HAS_GPU_LIMIT}) || {_GPU_LIMIT}.matches('^[0-9]+$')",
            f"resources.limits[{GPU_RESOURCE}] must be a whole number",
            Reason.RESOURCES_INVALID,
            ".resources",
        ),
        CelRule(
            f"!({_HAS_GPU_LIMIT}) || !{_GPU_LIMIT}.matches('^[0-9]+$') || int({_GPU_LIMIT}) <= {MAX_GPUS}",
            f"resources.limits[{GPU_RESOURCE}]: more than {MAX_GPUS} GPU per replica needs tensor parallelism, "
            "which is not supported yet",
            Reason.FEATURE_NOT_SUPPORTED,
            ".resources",
        ),
        CelRule(
            f"!({_HAS_GPU_REQUEST}) || ({_HAS_GPU_LIMIT} && {_GPU_REQUEST} == {_GPU_LIMIT})",
            f"resources: {GPU_RESOURCE} must be set in limits (requests must equal limits)",
            Reason.RESOURCES_INVALID,
            ".resources",
        ),
        CelRule(
            f"!({_device_is('cuda')}) || ({_HAS_GPU_LIMIT} && int({_GPU_LIMIT}) >= 1)",
            f"engine.device cuda needs resources.limits[{GPU_RESOURCE}] >= 1",
            Reason.RESOURCES_INVALID,
            ".engine",
        ),
        CelRule(
            f"!({_device_is('cpu')}) || !({_HAS_GPU_LIMIT}) || int({_GPU_LIMIT}) == 0",
            f"engine.device cpu contradicts {GPU_RESOURCE} limits",
            Reason.RESOURCES_INVALID,
            ".engine",
        ),
    )

    @model_validator(mode="after")
    def _supported(self) -> ModelPoolSpec:
        if self.engine.speculation is not None and self.engine.speculation.method == "draft":
            raise spec_error(
                Reason.FEATURE_NOT_SUPPORTED, "engine.speculation.method: draft models are not supported (use trie)"
            )
        if self.adapters:
            raise spec_error(Reason.FEATURE_NOT_SUPPORTED, "adapters: LoRA adapters are not supported yet")
        a = self.autoscaling
        if a is not None and a.min_replicas > a.max_replicas:
            raise spec_error(
                Reason.AUTOSCALING_INVALID,
                f"autoscaling.minReplicas ({a.min_replicas}) exceeds maxReplicas ({a.max_replicas})",
            )
        requests = (self.resources.requests if self.resources else None) or {}
        limits = (self.resources.limits if self.resources else None) or {}
        gpus = limits.get(GPU_RESOURCE, 0)
        if not str(gpus).isdigit():
            raise spec_error(Reason.RESOURCES_INVALID, f"resources.limits[{GPU_RESOURCE}] must be a whole number")
        if int(gpus) > MAX_GPUS:
            raise spec_error(
                Reason.FEATURE_NOT_SUPPORTED,
                f"resources.limits[{GPU_RESOURCE}]: {gpus} GPUs per replica need tensor parallelism, "
                f"which is not supported yet (at most {MAX_GPUS})",
            )
        if GPU_RESOURCE in requests and str(requests[GPU_RESOURCE]) != str(limits.get(GPU_RESOURCE)):
            raise spec_error(
                Reason.RESOURCES_INVALID, f"resources: {GPU_RESOURCE} must be set in limits (requests must equal limits)"
            )
        if self.engine.device == Device.CUDA and self.gpus == 0:
            raise spec_error(Reason.RESOURCES_INVALID, f"engine.device cuda needs resources.limits[{GPU_RESOURCE}] >= 1")
        if self.gpus and self.engine.device == Device.CPU:
            raise spec_error(Reason.RESOURCES_INVALID, f"engine.device cpu contradicts {GPU_RESOURCE} limits")
        return self

    @property
    def gpus(self) -> int:
        """GPUs per replica (resources.limits[nvidia.com/gpu])."""
        limits = (self.resources.limits if self.resources else None) or {}
        return int(limits.get(GPU_RESOURCE, 0))

    @property
    def device(self) -> Device:
        """The replica's device once auto is resolved."""
        if self.engine.device != Device.AUTO:
            return self.engine.device
        return Device.CUDA if self.gpus else Device.CPU


class ModelPoolStatus(ApiModel):
    """Observed state of a ModelPool."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation the operator last acted on."""
    replicas: Annotated[int, Field(ge=0)] | None = None
    """Replicas that exist (the scale subresource's status)."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Replicas passing their readiness probe."""
    selector: str | None = None
    """Label selector of the replicas' pods (the scale subresource's selector)."""
    endpoints: list[str] | None = None
    """Base URLs that serve this pool's model (the Service in a cluster; the replicas under shoal up)."""
    conditions: list[Condition] | None = None
    """Ready, Progressing and Degraded."""


class ModelPool(ApiModel):
    """A pool of engine replicas serving one model, with autoscaling on queue depth."""

    api_version: Literal["shoal.dev/v1alpha1"] = "shoal.dev/v1alpha1"
    kind: Literal["ModelPool"] = "ModelPool"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: ModelPoolSpec
    status: ModelPoolStatus | None = None
