import os

# Tests run on 2 shared CPU cores: one thread per process avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
