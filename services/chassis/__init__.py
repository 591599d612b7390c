"""The microservice chassis every Mailplane service runs on.

Server bootstrap with health and reflection (``server``), the error catalog
(``errors``), settings (``config``), PostgreSQL pools and migrations (``db``),
structured logging (``logs``), API-key authentication (``auth``), keyset page
tokens (``pagination``), prefixed, time-ordered IDs (``ids``) and the DNS
resolver of our nameservers (``nameservers``).
"""
