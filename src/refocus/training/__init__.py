"""GRPO training of the frame-selection policy (paper §3.2, Algorithm 1, Appendix B).

Import the sub-modules directly (``refocus.training.grpo_math``, ...); this package imports
nothing so that ``import refocus.training`` stays free of torch.
"""
