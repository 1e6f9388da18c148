"""Refusals before any rule runs: malformed, ambiguous or oversized requests, fronting, raw tunnels."""
