import os
import tempfile

import torch
from hypothesis import settings

# Tiny models are far too small for sparse attention to pay: the speed check
# (`sparsediff.methods.speed`) would run them dense. Tests of the check turn it on in their config.
os.environ["SPARSEDIFF_NEVER_SLOWER"] = "0"
# Where the speed check is on, its profile is the suite's own, never the user's cache.
os.environ["SPARSEDIFF_SPEED_PROFILE"] = os.path.join(tempfile.mkdtemp(prefix="sparsediff-speed-"), "profile.json")
# Without a GPU the Triton kernel runs on the CPU under the interpreter (triton reads this when a
# kernel compiles); on a GPU machine it compiles, and the `gpu` tests run it there.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# Small CPU tensors: one thread is faster and steadier on this 2-core machine.
torch.set_num_threads(1)

settings.register_profile("default", max_examples=40, deadline=None)
settings.load_profile("default")
