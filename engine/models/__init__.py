"""Model definitions. One family covers every supported architecture (see ``model_config``)."""

from shoal.engine.models.llama import LlamaForCausalLM

__all__ = ["LlamaForCausalLM"]
