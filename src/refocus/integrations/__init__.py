"""Bridges to other tools of the field (lmms-eval). Each one imports its tool only when used."""
