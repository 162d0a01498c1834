"""The transfer flows, shipped in the package so a worker on a cluster runs them from the installed wheel.

``rh-copy-folder``, ``rh-copy-blob`` (:mod:`.transfer`) and ``rh-copy-table`` (:mod:`.transfer_table`, kept apart
so Folder and Blob copies do not import pandas) are what :mod:`rh_prefect.resources.remote` runs on a cluster's
worker; their deployments' entrypoints are module paths (``rh_prefect.flows.transfer:copy_folder``), so no checkout
of this project is needed where they run. ``flows/`` at the top of the repository holds the examples.
"""
