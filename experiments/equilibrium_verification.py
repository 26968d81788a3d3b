"""The earlier name of :mod:`experiments.equilibrium_certification` ("verification" now means only
checking peers' outputs): ``python -m experiments.equilibrium_verification`` runs the same sweep."""

from .equilibrium_certification import main

if __name__ == "__main__":
    main()
