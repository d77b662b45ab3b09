"""nblab: a notebook-first lab for low-precision training recipes."""
