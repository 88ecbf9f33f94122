"""mkdocs-layerheat: token-by-layer heatmaps of language models, computed at build time, with a written summary."""

__version__ = "0.1.0"
