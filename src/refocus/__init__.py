"""refocus: reinforcement-guided frame selection for video-LLMs (ReFoCUS, arXiv 2506.01274).

Importing the package is cheap: heavy modules (torch, transformers, av) load only when the
sub-module that needs them is imported.
"""

__version__ = "0.1.0"

from refocus.errors import RefocusError

__all__ = ["RefocusError", "__version__"]
