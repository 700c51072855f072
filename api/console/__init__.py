"""The console: a browser page at /console (status, playground, conversations) over the server's own API."""

from .views import bp

__all__ = ["bp"]
