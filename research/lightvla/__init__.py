"""The LightVLA pruning research: the closed-loop experiment on the shapes testbed, its probes and its records
(research/lightvla/README.md)."""
