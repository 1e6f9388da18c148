"""Who is calling: proxy credentials (tokens, JWTs) turned into an identity."""
