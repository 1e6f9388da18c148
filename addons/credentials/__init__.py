"""Credential injection: the gateway, not the agent, holds upstream secrets."""
