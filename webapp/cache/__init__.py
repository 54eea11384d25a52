"""The optional Redis user cache, behind a breaker of its own."""
