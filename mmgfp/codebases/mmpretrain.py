"""MMPretrain: classifiers get random labels, at their test pipeline's image size."""
from typing import Optional, Sequence

import torch.nn as nn

from .base import Codebase, register_codebase

CLASSIFIER_INPUT_SIZE = (224, 224)  # when the config's pipelines name no size


@register_codebase
class MMPretrain(Codebase):
    scope = 'mmpretrain'
    title = 'MMPretrain'
    input_size = CLASSIFIER_INPUT_SIZE

    def default_input_size(self, cfg):
        from mmgfp.apis.inputs import pipeline_input_size
        return pipeline_input_size(cfg) or self.input_size

    def num_classes(self, model: nn.Module) -> Optional[int]:
        head = getattr(model, 'head', None)
        return int(head.num_classes) if hasattr(head, 'num_classes') else None

    def demo_batch(self, model: nn.Module, batch_size: int, input_size: Sequence[int],
                   seed: int, num_classes: Optional[int]) -> dict:
        from mmpretrain.structures import DataSample

        from mmgfp.codebases.inputs import random_images
        num_classes = num_classes or self.num_classes(model) or 10
        samples = [DataSample().set_gt_label(i % num_classes) for i in range(batch_size)]
        return {'inputs': random_images(model, batch_size, input_size, seed),
                'data_samples': samples}
