"""See what a network learned: the seed's three advantages measured, and where it looked.

    from convlens.explain import grad_cam, invariance_curves, parameter_sharing

Parameter sharing (sharing.py), translation invariance (invariance.py), hierarchical features
(hierarchy.py), Grad-CAM and saliency (gradcam.py), the sanity check that Grad-CAM follows
what the model learned (sanity.py) and their figures (figures.py). `convlens explain RUN`
(every measure of a run, against an MLP trained like it) is convlens.api.explain.explain_run.
"""

from convlens.explain.gradcam import grad_cam, peak, saliency
from convlens.explain.hierarchy import find_stages, first_conv, stage_outputs, top_activating
from convlens.explain.invariance import invariance_curves, rotate_images, shift_images
from convlens.explain.sanity import object_scenes, pointing_game
from convlens.explain.sharing import parameter_sharing

__all__ = [
    "find_stages",
    "first_conv",
    "grad_cam",
    "invariance_curves",
    "object_scenes",
    "parameter_sharing",
    "peak",
    "pointing_game",
    "rotate_images",
    "saliency",
    "shift_images",
    "stage_outputs",
    "top_activating",
]
