"""The inboxes service: addresses in pods, allocation, credentials (DESIGN §4 Inboxes)."""
