"""Reading the recording: flows, one flow in detail, sessions, the SQL page, replay."""
