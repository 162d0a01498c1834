"""Example flows of the rh-prefect project (the quickstart and the BERT pipeline); the transfer flows ship in the package, in rh_prefect.flows."""
