"""See what a network learned: the seed's three advantages measured, and where it looked.

    from convlens.explain import explain_run, grad_cam, parameter_sharing
    summary = explain_run("runs/train", ["shoe.png"], invariance=True)

Parameter sharing (sharing.py), translation invariance against an MLP (invariance.py),
hierarchical features (hierarchy.py), Grad-CAM and saliency (gradcam.py), the sanity check
that Grad-CAM follows what the model learned (sanity.py), figures (figures.py), and
`convlens explain` itself (run.py).
"""

from convlens.explain.gradcam import grad_cam, peak, saliency
from convlens.explain.hierarchy import find_stages, first_conv, stage_outputs, top_activating
from convlens.explain.invariance import invariance_curves, rotate_images, shift_images
from convlens.explain.run import explain_run, run_home
from convlens.explain.sanity import object_scenes, pointing_game
from convlens.explain.sharing import parameter_sharing

__all__ = [
    "explain_run",
    "find_stages",
    "first_conv",
    "grad_cam",
    "invariance_curves",
    "object_scenes",
    "parameter_sharing",
    "peak",
    "pointing_game",
    "rotate_images",
    "run_home",
    "saliency",
    "shift_images",
    "stage_outputs",
    "top_activating",
]
