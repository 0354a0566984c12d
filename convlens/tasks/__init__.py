"""Tasks: what a run learns, and everything after training that depends on it.

    registry.py   register_task, task_class, list_tasks (torch-free: config reads the names)
    base.py       Task (training hooks, capabilities, evaluate, scores, answer) and Evaluation
    loading.py    a trained model rebuilt from its weights file: load_model, load_run, LoadedRun
    classify.py   classify, and detection.py: a two-class run's threshold, metrics and flag

multilabel and anomaly are registered from convlens.medical, embed from convlens.faces. This
package's own import is light (the registry): `import convlens.config` stays fast.
"""

from convlens.tasks.registry import list_tasks, make_task, register_task, task_class

__all__ = ["list_tasks", "make_task", "register_task", "task_class"]
