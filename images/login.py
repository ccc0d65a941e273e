"""Registry logins: check a user name and password against the registry (through the engine, as
``docker login`` does), then keep them where docker and the SDK look for them: the credential
store named in the docker config, else the config's ``auths`` section. The secret is never
printed, logged or put in an error message.

ECR and SWR users do not have a password to type: :func:`ecr_credentials` asks AWS for a
temporary token with boto3, :func:`swr_credentials` derives SWR's long-term login from the
account's access keys the way Huawei's documented login command does.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from typing import Callable

from images.engine import client
from images.registry import RegistryError, is_denied, retrying
from jobs.core.files import atomic_write
from jobs.core.lazy import boto3, botocore
from jobs.core.lazy import docker as sdk

ECR_HOST = re.compile(r"^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
SWR_HOST = re.compile(r"^swr\.([a-z0-9-]+)\.myhuaweicloud\.(?:com|eu|cn)$")
SWR_KEY_ENV = ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK")


def config_path() -> Path:
    """The docker client config: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG")
    return (Path(folder) if folder else Path.home() / ".docker") / "config.json"


def login(registry: str, username: str, password: str, say: Callable[[str], None] | None = None) -> Path:
    """Check the credentials against ``registry`` (retrying while it is unreachable), then store
    them. Returns the docker config they are recorded in."""
    if not username or not password:
        raise RegistryError(f"logging in to {registry} needs a user name and a password")
    docker = client()

    def attempt() -> None:
        try:
            docker.login(username=username, password=password, registry=registry, reauth=True)
        except sdk.errors.APIError as exc:
            reason = (exc.explanation or str(exc)).replace(password, "***")
            if is_denied(reason):
                raise RegistryError(f"{registry} refused the login of user '{username}': "
                                    "wrong user name or password") from None
            raise RegistryError(f"cannot log in to {registry}: {reason}") from None

    retrying(attempt, registry, say=say)
    return store(registry, username, password)


def store(registry: str, username: str, password: str) -> Path:
    """Keep the credentials for ``registry`` as the docker CLI would: in the credential helper the
    config names for it (``credHelpers``, then ``credsStore``), else base64 in ``auths``."""
    path = config_path()
    config = json.loads(path.read_text()) if path.exists() else {}
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    auths = config.setdefault("auths", {})
    if helper:
        try:
            sdk.credentials.Store(helper).store(server=registry, username=username, secret=password)
        except sdk.credentials.StoreError as exc:
            raise RegistryError(f"the docker credential helper '{helper}' could not store the login "
                                f"for {registry}: {str(exc).replace(password, '***')}") from None
        auths[registry] = {}
    else:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        auths[registry] = {"auth": token}
    atomic_write(path, json.dumps(config, indent=2), mode=0o600)
    return path


def ecr_credentials(registry: str | None = None, region: str | None = None) -> tuple[str, str, str]:
    """(registry host, ``AWS``, token) from ECR's ``GetAuthorizationToken`` for the account and
    region in ``registry`` (``ACCOUNT.dkr.ecr.REGION.amazonaws.com``), or the default ones."""
    match = ECR_HOST.match(registry or "")
    if registry and not match:
        raise RegistryError(f"'{registry}' is not an ECR registry (ACCOUNT.dkr.ecr.REGION.amazonaws.com)")
    kwargs = {"registryIds": [match[1]]} if match else {}
    try:
        ecr = boto3.client("ecr", region_name=region or (match[2] if match else None))
        data = ecr.get_authorization_token(**kwargs)["authorizationData"][0]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise RegistryError(f"cannot get an ECR login token for {registry or 'the default registry'}: {exc}") from None
    user, _, token = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    host = re.sub(r"^https?://", "", data["proxyEndpoint"]).rstrip("/")
    return host, user, token


def swr_credentials(registry: str, region: str | None = None,
                    environ: dict[str, str] | None = None) -> tuple[str, str, str]:
    """(registry host, ``REGION@AK``, login key) for Huawei SWR: the login key is the hex
    HMAC-SHA256 of the access key under the secret key, as in SWR's documented long-term login
    command. The keys come from ``HUAWEICLOUD_SDK_AK`` / ``HUAWEICLOUD_SDK_SK``."""
    env = os.environ if environ is None else environ
    ak, sk = (env.get(name) for name in SWR_KEY_ENV)
    if not ak or not sk:
        raise RegistryError(f"an SWR login needs the account's access keys in {' and '.join(SWR_KEY_ENV)}")
    match = SWR_HOST.match(registry)
    region = region or (match[1] if match else None)
    if not region:
        raise RegistryError(f"cannot tell the SWR region from '{registry}' (swr.REGION.myhuaweicloud.com); "
                            "pass --region")
    key = hmac.new(sk.encode(), ak.encode(), hashlib.sha256).hexdigest()
    return registry, f"{region}@{ak}", key
