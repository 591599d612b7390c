"""The pods service: accounts, plans, pods and API keys (DESIGN §2, §4; seeds 000-002)."""
