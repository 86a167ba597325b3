"""Exchange adapters: one folder per venue, found by name through the registry."""
