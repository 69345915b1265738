"""Heatmaps: where in a film the model found its evidence (Grad-CAM, ``gradcam``), drawn on
the film with a caption that says it is not for diagnosis (``overlay``), for the films
``[explain]`` names (``settings``), as a stage after screening (``heatmaps``).
See docs/heatmaps.md for the method, its sanity checks and its cost."""
