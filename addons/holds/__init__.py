"""Holding requests for human approval: hold specs, the approvals state, notifications."""
