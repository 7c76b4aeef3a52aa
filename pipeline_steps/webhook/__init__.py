"""`ps webhook serve`: a GitLab push-event receiver that starts canary-auto (store, server, actions)."""
