"""Training: the epoch loop (loop.py; numpy_loop.py for the NumPy engine), the run's lifecycle
and state (lifecycle.py, resume.py), the model it builds (build.py), its data (data.py),
optimisers and schedules (optim.py, ema.py), torchrun (distributed.py), console (progress.py).

It imports no task: the caller (convlens.api.train) hands `fit` the task's training hooks
(hooks.py) and what to do once training ends.
"""
