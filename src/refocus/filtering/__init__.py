"""Reward-variance filtering of training questions (paper Appendix A).

``windows`` holds the pure index arithmetic (windows, complements, uniform picks, variance);
the scoring of the subsets with a reference model and the ``refocus filter`` command live in
their own modules and import it.
"""
