"""Trading strategies run by the executor (built with the executor)."""
