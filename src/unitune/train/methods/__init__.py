"""Each method's training code: ``prepare`` shapes its data, ``build`` makes its TRL trainer. The table that lists the
methods is unitune/methods.py."""
