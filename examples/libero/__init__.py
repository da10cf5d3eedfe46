"""The LIBERO example. Its scripts run in LIBERO's own environment (``setup_env.sh``, no ``openpi``) as files, e.g.
``python examples/libero/main.py``; the tests import ``examples.libero.eval_loop``."""
