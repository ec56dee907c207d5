from .inputs import demo_batch, loss_forward, tensor_forward

__all__ = ['demo_batch', 'loss_forward', 'tensor_forward']
