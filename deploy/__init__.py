"""Running Mailplane: the local launcher, the operator CLI and code generation."""
