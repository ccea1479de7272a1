"""The selection rules a cut can apply (light: no torch import, so command-line parsers can list them)."""

# trio: the method this toolkit exports; the others are the peers TRIO is compared against.
METHODS = ("trio", "fastv", "dart", "random", "uniform")
