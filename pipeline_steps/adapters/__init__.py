"""Thin adapters around the systems `ps` talks to (Docker, nginx, git, Mattermost, GitLab)."""
