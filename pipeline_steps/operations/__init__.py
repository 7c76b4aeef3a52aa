"""Operations: one module per step; each function does its work and returns a result object.

Operations never print: the CLI prints what they return."""
