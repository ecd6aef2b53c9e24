"""``python -m gpulab.hub -f CONFIG``: the hub process (what ``gpulab up`` runs).

JupyterHub, started as its ``jupyterhub`` command starts it, without the second of CPU
its import spends compiling IRI grammars nothing in it uses
(``gpulab.extensions.server.singleuser``).
"""

from gpulab.extensions.server.singleuser import defer_iri_grammars

defer_iri_grammars()

from jupyterhub.app import main  # noqa: E402 (after the stand-in is in place)

main()
