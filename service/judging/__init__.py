"""Generative judges: the templates and how a verdict is parsed (templates), the service
that generates and reads judgments, comparisons and meta-judgments (service), and the
meta-judge's battles (battles)."""
