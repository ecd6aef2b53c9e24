"""Users' environments as images: a user's own packages frozen into one OCI layer on top
of the base environment, pushed to a registry, pinned by digest, and started from later.

- :mod:`.layers`: a user's packages packed into a layer (tar run as the user), and a
  layer unpacked (by root, every member checked);
- :mod:`.registry`: the OCI distribution API client;
- :mod:`.registry_process`: the embedded registry that ``gpulab up`` runs.
"""
