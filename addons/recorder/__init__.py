"""Recording every flow and event: turning flows into rows for the recordings store."""
