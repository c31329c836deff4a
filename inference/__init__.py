"""M3Sense inference: the network, training (Algorithm 1), evaluation, checkpoints."""

from inference.model import FUSIONS, M3Sense, ModelConfig, ModelOutput, count_parameters, kl_to_standard_normal

__all__ = ["FUSIONS", "M3Sense", "ModelConfig", "ModelOutput", "count_parameters", "kl_to_standard_normal"]
