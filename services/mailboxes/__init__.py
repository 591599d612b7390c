"""The mailboxes service: agentic inbound mailboxes (seed 004; DESIGN §4 Mailboxes)."""
