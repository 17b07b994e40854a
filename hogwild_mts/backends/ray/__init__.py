"""The Ray backend: a parameter-server actor with an exact version counter
and worker actors that push K local steps; see docs/distributed.md.  Importing this package
does not import ray; :mod:`hogwild_mts.backends.ray.backend` does when a run starts."""
