"""The paper's analyses: needle-in-a-haystack heatmap, selection diversity, temporal entropy,
likelihood bins (§4, Appendix C).

The math (entropy estimator, distances between selection distributions) lives in pure
modules, ``temporal_entropy`` and ``distances``; the plotting and CLI code imports them.
"""
