"""Replaying recorded requests through the gateway as it is today."""
