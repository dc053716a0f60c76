"""The answerer side: reasoning generation, SFT on templated rationales, and GRPO / Video-KTR
key-token RL of the answering model (``refocus answerer ...``).

ReFoCUS optimises which frames the answerer sees; this package optimises what the answerer
writes, so the two can be compared and combined (ReFoCUS frames into a KTR-trained
answerer). Importing it does not import torch.
"""
