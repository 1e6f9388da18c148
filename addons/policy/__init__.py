"""The rules file, its compiled conditions, and the addon that decides each request."""
