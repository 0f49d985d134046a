class CommandError(ValueError):
    """Bad input to a `gradfused` command (compare, bench): reported as one line and exit status 2,
    never a traceback."""
