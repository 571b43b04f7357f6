"""HTTP side of dlx: request schemas, tokenizer/detokenizer helpers, SSE framing and the Flask app.
Runs only in frontend processes; engine processes never import this package."""
