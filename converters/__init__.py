"""Bridges between .dcz and the ecosystem (torch checkpoints, safetensors).

Installed as ``dcfmt.converters``.  torch and safetensors are imported lazily,
only here and in training code, so the core package decodes without them.
The converters themselves are the subject of a later issue.
"""
