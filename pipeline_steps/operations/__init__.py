"""Operations: one module per step; each function does the work and returns a result object.

They never print and never import click: the CLI (pipeline_steps/cli/) prints their results, and a
long operation reports progress only through the observer it is handed (pipeline_steps/progress.py).
"""
