"""Answer checking for `kvarn score` and `kvarn compare`.

Kept free of heavy imports: the sandbox child imports modules from this package.
"""
