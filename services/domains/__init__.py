"""The domains service: custom domains, account-wide or pod-scoped, their DNS
records, DKIM keys and verification (DESIGN §3, §4 Domains; seeds 000, 001)."""
