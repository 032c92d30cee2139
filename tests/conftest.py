import torch
from hypothesis import settings

# Small CPU tensors: one thread is faster and steadier on this 2-core machine.
torch.set_num_threads(1)

settings.register_profile("default", max_examples=40, deadline=None)
settings.load_profile("default")
