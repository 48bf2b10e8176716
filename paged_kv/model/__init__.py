"""A small decoder-only transformer with random weights, run end to end through the cache.

`ModelConfig` and its presets (`get_model_config`), seeded `random_weights`, the forward
pass with pluggable attention (`Transformer`), the dense reference with no cache
(`DenseModel`), the model decoding through a `PagedKVCache` (`PagedModelRunner`) with
prompt logits kept with cached blocks (`PromptLogits`), and a scripted generation that
compares the two step by step (`run_generation`).
"""

from paged_kv.model.config import MODEL_CONFIGS, ModelConfig, get_model_config
from paged_kv.model.dense import DenseModel
from paged_kv.model.paged import ATTENTION_BACKENDS, PagedModelRunner, PrefillResult
from paged_kv.model.prompt_logits import PromptLogits
from paged_kv.model.transformer import Transformer
from paged_kv.model.weights import LayerWeights, Weights, random_weights

__all__ = [
    "ATTENTION_BACKENDS",
    "MODEL_CONFIGS",
    "DenseModel",
    "LayerWeights",
    "ModelConfig",
    "PagedModelRunner",
    "PrefillResult",
    "PromptLogits",
    "Transformer",
    "Weights",
    "get_model_config",
    "random_weights",
]
