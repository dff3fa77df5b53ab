"""Groups of CLI commands, each a Typer app that ``medlake.cli`` registers with ``add_typer``."""
