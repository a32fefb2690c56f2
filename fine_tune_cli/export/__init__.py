"""Export formats (one registry) and the parity gate every export must pass."""
