"""Flow state, events, replies and the plain helpers every addon shares. Imports nothing of ours."""
