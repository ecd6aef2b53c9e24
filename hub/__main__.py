"""``gpulab-hub -f CONFIG``: the hub process (what ``gpulab up`` runs).

JupyterHub, started as its ``jupyterhub`` command starts it, without the second of CPU
its import spends compiling IRI grammars nothing in it uses
(``gpulab.extensions.server.singleuser``). A console script, not ``python -m``: that
would put the working directory first on the import path.
"""

from gpulab.extensions.server.singleuser import defer_iri_grammars


def main() -> None:
    defer_iri_grammars()
    from jupyterhub.app import main as jupyterhub

    jupyterhub()


if __name__ == "__main__":
    main()
