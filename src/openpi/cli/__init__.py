"""What the command lines under ``scripts/`` run where it needs the registry of training configs: the top layer."""
