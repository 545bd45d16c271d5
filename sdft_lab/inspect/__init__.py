"""Looking inside a run: the pre-flight check, token-level diffs, plots and notebook widgets."""
