"""A blocking client for Perplexity's web app API (the `/rest/sse/perplexity_ask` stream and friends)."""
