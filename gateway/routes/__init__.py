"""One routes module per resource family."""
