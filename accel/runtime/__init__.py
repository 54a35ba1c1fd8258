"""Runtime: loading models and artifacts, kernel ops, backends."""
