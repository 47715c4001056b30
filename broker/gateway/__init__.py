"""The HTTP gateway: TopChef's REST API, served on this broker.

Jobs posted over HTTP are the same rows and the same queue messages as jobs
submitted from Python, and HTTP workers take jobs through the same claims as
Celery workers. ``topchef api`` serves it; ``create_app`` builds the WSGI app.
"""

from broker.gateway.app import create_app
from broker.gateway.server import Server

__all__ = ["Server", "create_app"]
