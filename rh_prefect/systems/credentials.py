"""Credential blocks for the cloud systems. Secrets are SecretStr fields: masked in the UI, reprs and logs.

With no credentials block the standard environment chain applies (AWS_* variables including
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, ``~/.aws``; GOOGLE_APPLICATION_CREDENTIALS or STORAGE_EMULATOR_HOST).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from pydantic import Field, SecretStr

from rh_prefect.errors import CredentialsError
from rh_prefect.systems.blocktypes import RegisteredOnce
from rh_prefect.systems.redact import redact_in_logs


class S3Credentials(RegisteredOnce):
    """Credentials and endpoint for S3 or any S3-compatible store (MinIO, Ceph, R2, ...).

    Example:
        ```python
        import rh_prefect as rh
        from rh_prefect import S3Credentials
        S3Credentials(aws_access_key_id="AKIA...", aws_secret_access_key="...").save("prod-s3")
        rh.folder(path="/my-bucket/data", system="s3", credentials=S3Credentials.load("prod-s3"))
        ```
    """

    _block_type_name = "rh S3 Credentials"
    _description = "Access key, secret and endpoint for S3 or an S3-compatible object store."

    aws_access_key_id: Optional[str] = Field(default=None, title="Access key ID", description="AWS access key ID.")
    aws_secret_access_key: Optional[SecretStr] = Field(
        default=None, title="Secret access key", description="AWS secret access key (kept secret)."
    )
    aws_session_token: Optional[SecretStr] = Field(
        default=None, title="Session token", description="Temporary session token, if any (kept secret)."
    )
    endpoint_url: Optional[str] = Field(
        default=None, title="Endpoint URL", description="Endpoint of an S3-compatible store; empty for AWS."
    )
    region_name: Optional[str] = Field(default=None, title="Region", description="AWS region, e.g. us-east-1.")
    default_bucket: Optional[str] = Field(
        default=None, title="Default bucket", description="Bucket used when a resource is saved without a path."
    )

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        opts: dict[str, Any] = {}
        if self.aws_access_key_id or self.aws_secret_access_key:
            if not (self.aws_access_key_id and self.aws_secret_access_key):
                raise CredentialsError(
                    "S3Credentials needs both aws_access_key_id and aws_secret_access_key (or neither, to use "
                    "the environment)."
                )
            opts["key"] = self.aws_access_key_id
            opts["secret"] = self.aws_secret_access_key.get_secret_value()
        if self.aws_session_token:
            opts["token"] = self.aws_session_token.get_secret_value()
        redact_in_logs([opts.get("secret"), opts.get("token")])
        client_kwargs: dict[str, Any] = {}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region_name:
            client_kwargs["region_name"] = self.region_name
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts


class GCSCredentials(RegisteredOnce):
    """Credentials and endpoint for Google Cloud Storage.

    Example:
        ```python
        from rh_prefect import GCSCredentials
        GCSCredentials(service_account_info=open("sa.json").read(), project="my-proj").save("prod-gcs")
        ```
    """

    _block_type_name = "rh GCS Credentials"
    _description = "Service account and project for Google Cloud Storage (or a GCS emulator endpoint)."

    service_account_info: Optional[SecretStr] = Field(
        default=None, title="Service account JSON", description="Contents of a service-account key file (secret)."
    )
    project: Optional[str] = Field(default=None, title="Project", description="GCP project ID.")
    endpoint_url: Optional[str] = Field(
        default=None, title="Endpoint URL", description="Custom endpoint (e.g. an emulator); empty for Google."
    )
    default_bucket: Optional[str] = Field(
        default=None, title="Default bucket", description="Bucket used when a resource is saved without a path."
    )

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``gcsfs.GCSFileSystem``."""
        opts: dict[str, Any] = {}
        if self.service_account_info:
            try:
                opts["token"] = json.loads(self.service_account_info.get_secret_value())
            except ValueError as exc:
                raise CredentialsError(
                    "GCSCredentials.service_account_info is not valid JSON; paste the whole key file."
                ) from exc
        elif self.endpoint_url:
            opts["token"] = "anon"
        if self.project:
            opts["project"] = self.project
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        return opts


class GitHubCredentials(RegisteredOnce):
    """A token for private GitHub repositories and the base URL of the git host.

    Example:
        ```python
        import rh_prefect as rh
        from rh_prefect import GitHubCredentials
        GitHubCredentials(token="ghp_...").save("gh")
        rh.folder(path="my-org/private-repo@main/configs", system="github", credentials=GitHubCredentials.load("gh"))
        ```
    """

    _block_type_name = "rh GitHub Credentials"
    _description = "Personal access token for private repositories, and the git host's base URL."

    token: Optional[SecretStr] = Field(
        default=None, title="Token", description="Personal access token (kept secret); empty for public repos."
    )
    base_url: str = Field(
        default="https://github.com",
        title="Base URL",
        description="Where 'org/repo' paths are cloned from, e.g. https://github.com or a GitHub Enterprise URL.",
    )
