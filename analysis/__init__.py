"""Reading run outputs and drawing figures for papers (``python -m analysis --help``)."""
