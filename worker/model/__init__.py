"""The model: the exported learner, checked and described (``learner``), its preprocessing
(``preprocess``), BatchNorm folding (``fusion``) and batched inference (``predictor``)."""
