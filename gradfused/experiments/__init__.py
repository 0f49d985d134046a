"""`gradfused compare`: the research comparisons, reproducible on data that ships with the package."""
