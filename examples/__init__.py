"""The examples, importable by the tests as ``examples.*`` (a regular package: an installed dependency, draccus, ships
a top-level ``examples`` folder that would otherwise merge with this one)."""
