"""The Typer CLI: one thin module per command; app.py assembles them."""
