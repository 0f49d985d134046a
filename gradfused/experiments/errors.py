class CompareError(ValueError):
    """Bad input to `gradfused compare`: reported as one line and a non-zero exit, never a traceback."""
