"""The run artefact: what training leaves behind and everything after it reads.

    meta.py     WeightsMeta: the typed metadata of a weights (or ONNX) file, checked once
    atomic.py   files written atomically (a temp file beside, fsync, rename)
    weights.py  weights and training state as safetensors, never pickle
    folder.py   Run: a run folder's files (config.yaml, results.csv, metrics.json, weights/)
    lock.py     run-folder naming (train, train2, ...) and the lock one training holds

No torch here or in meta.py: the NumPy reference engine reads weights metadata through them.
"""
