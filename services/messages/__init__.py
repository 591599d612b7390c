"""The messages service: the mail itself (DESIGN §7)."""
