"""The HTTP edge: errors, API keys, quotas, metrics and SSE encoding; everything here may use Flask."""
