"""Runnable example lab workers: copy one, change the handler, run ``topchef worker``."""
