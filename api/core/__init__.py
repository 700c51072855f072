"""The Flask-free core: chat-shaped requests in, Perplexity asks out, answers rendered back; no HTTP here."""
