"""The local launcher behind ``make run``."""
