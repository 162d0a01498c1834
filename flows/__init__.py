"""Prefect flows of the rh-prefect project: transfer flows (deployable) and an offline example pipeline."""
