"""The paper's analyses: needle-in-a-haystack heatmap, selection diversity, temporal entropy,
likelihood bins (§4, Appendix C).

The math lives in pure modules: the Kozachenko–Leonenko entropy estimator in
:mod:`refocus.estimators` (shared with training's ``select/temporal_entropy`` metric) and the
distances between selection distributions in ``distances``; the plotting and CLI code imports them.
"""
