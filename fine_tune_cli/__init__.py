"""fine_tune_cli: recipes in, trained and exported transformer models out."""

__version__ = "0.1.0"
