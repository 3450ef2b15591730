"""Results as JSON shapes and readable tables. The only place (with ``ngc.cli``) that prints."""
