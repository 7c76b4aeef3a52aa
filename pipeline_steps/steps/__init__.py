"""One module per step: a step function returning a result object, and its click command."""
