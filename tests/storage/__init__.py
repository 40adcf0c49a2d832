"""Storage tests: the shared conformance contract and one module per backend."""
