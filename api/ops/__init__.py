"""Operations: liveness, readiness, stats and Prometheus metrics; exempt from keys and quotas."""

from .views import bp

__all__ = ["bp"]
