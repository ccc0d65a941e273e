"""Build, log in, push and pull back against a real Docker engine and an htpasswd registry, the
way a user drives the CLI; and the ways it goes wrong: a wrong password, a registry that is down,
a broken Dockerfile, no engine at all."""
from __future__ import annotations

import base64
import json
import subprocess

import pytest

from images import digests
from images.login import config_path, ecr_credentials, swr_credentials
from images.registry import split_ref
from tests.harness.net import free_port


@pytest.fixture
def app_dockerfile(tmp_path, base_image):
    """A small user Dockerfile FROM the local busybox base: a file layer and a RUN layer."""
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "hello.txt").write_text("hello from the image\n")
    (folder / "Dockerfile").write_text(
        "ARG BASE\nFROM ${BASE}\nARG GREETING=hi\nCOPY hello.txt /hello.txt\n"
        "RUN echo \"$GREETING\" > /greeting.txt\n")
    return folder / "Dockerfile"


def build(runner, dockerfile, base_image, *extra: str) -> dict:
    """`faceops image build --json` of ``dockerfile`` FROM ``base_image``: its JSON answer."""
    result = runner("image", "build", "--file", dockerfile, "--base", base_image, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_unchanged_image_is_not_rebuilt(runner, docker_env, base_image, app_dockerfile):
    first = build(runner, app_dockerfile, base_image)
    again = build(runner, app_dockerfile, base_image)
    assert first["built"] and not again["built"]
    assert again["ref"] == first["ref"] and again["id"] == first["id"]
    other = build(runner, app_dockerfile, base_image, "--build-arg", "GREETING=hello")
    assert other["built"] and other["content_hash"] != first["content_hash"] and other["ref"] != first["ref"]
    (app_dockerfile.parent / "hello.txt").write_text("changed\n")
    assert build(runner, app_dockerfile, base_image)["content_hash"] != first["content_hash"]
    out = docker_env.client().containers.run(other["ref"], ["cat", "/greeting.txt"], remove=True, network_mode="none")
    assert out == b"hello\n"


def test_login_push_pull_back_same_digest(runner, docker_env, registry, base_image, app_dockerfile):
    ref = f"{registry.host}/team/app:v1"
    built = build(runner, app_dockerfile, base_image, "--tag", ref)
    login = runner("image", "login", registry.host, "--username", registry.user, "--password-stdin",
                   input=registry.password + "\n")
    assert login.exit_code == 0, login.output
    assert registry.password not in login.output
    stored = json.loads(config_path().read_text())["auths"][registry.host]["auth"]
    assert base64.b64decode(stored).decode() == f"{registry.user}:{registry.password}"

    pushed = runner("image", "push", ref, "--json")
    assert pushed.exit_code == 0, pushed.output
    result = json.loads(pushed.stdout)
    assert result["digest"].startswith("sha256:") and result["pushed_layers"]
    assert digests.lookup(ref) == result["digest"]

    again = json.loads(runner("image", "push", ref, "--json").stdout)
    assert again["digest"] == result["digest"]
    assert not again["pushed_layers"] and set(again["skipped_layers"]) == set(result["pushed_layers"])

    client = docker_env.client()
    client.images.remove(built["id"], force=True)
    pulled = client.images.pull(ref, auth_config={"username": registry.user, "password": registry.password})
    assert f"{registry.host}/team/app@{result['digest']}" in pulled.attrs["RepoDigests"]
    assert client.containers.run(ref, ["cat", "/hello.txt"], remove=True, network_mode="none") == b"hello from the image\n"


def test_push_to_another_registry_namespace_and_list(runner, docker_env, registry, base_image, app_dockerfile):
    built = build(runner, app_dockerfile, base_image)
    assert runner("image", "login", registry.host, "-u", registry.user, "--password-stdin",
                  input=registry.password).exit_code == 0
    result = runner("image", "push", built["ref"], "--registry", f"{registry.host}/mirror")
    assert result.exit_code == 0, result.output
    target = f"{registry.host}/mirror/app:{split_ref(built['ref'])[2]}"
    digest = digests.lookup(target)
    assert digest and result.stdout.splitlines()[-1] == f"{registry.host}/mirror/app@{digest}"
    listed = json.loads(runner("image", "list", "--json").stdout)
    rows = {row["ref"]: row for row in listed}
    assert rows[target]["digest"] == digest and rows[built["ref"]]["digest"] is None
    assert rows[target]["content_hash"] == built["content_hash"]


def test_wrong_password_is_refused_without_echoing_it(runner, docker_env, registry):
    secret = "not-the-password-4711"
    result = runner("image", "login", registry.host, "-u", registry.user, "--password-stdin", input=secret)
    assert result.exit_code == 2
    assert "wrong user name or password" in result.output and registry.host in result.output
    assert secret not in result.output
    assert not config_path().exists()


def test_push_without_login_says_to_log_in(runner, docker_env, registry, base_image, app_dockerfile):
    ref = f"{registry.host}/team/nologin:v1"
    build(runner, app_dockerfile, base_image, "--tag", ref)
    result = runner("image", "push", ref)
    assert result.exit_code == 2
    assert f"faceops image login {registry.host}" in result.output


def test_registry_down_retries_then_names_it(runner, docker_env, base_image, app_dockerfile):
    host = f"127.0.0.1:{free_port()}"
    ref = f"{host}/team/app:v1"
    build(runner, app_dockerfile, base_image, "--tag", ref)
    result = runner("image", "push", ref)
    assert result.exit_code == 2
    assert result.output.count("retrying") == 3
    assert host in result.output.splitlines()[-1] and "gave up after 4 attempts" in result.output


def test_login_to_registry_down_names_it(runner, docker_env):
    host = f"127.0.0.1:{free_port()}"
    result = runner("image", "login", host, "-u", "someone", "--password-stdin", input="pw-9876")
    assert result.exit_code == 2
    assert host in result.output and "gave up" in result.output and "pw-9876" not in result.output


def test_dockerfile_error_shows_the_failing_step_and_its_output(runner, docker_env, base_image, tmp_path):
    (tmp_path / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nRUN echo preparing && echo 'disk on fire' >&2 && false\n")
    result = runner("image", "build", "--file", tmp_path / "Dockerfile", "--base", base_image)
    assert result.exit_code == 2
    assert "RUN echo preparing && echo 'disk on fire' >&2 && false failed" in result.output
    assert "returned a non-zero code: 1" in result.output and "disk on fire" in result.output


def test_dockerfile_syntax_error_is_a_clear_message(runner, docker_env, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nFLY away\n")
    result = runner("image", "build", "--file", tmp_path / "Dockerfile")
    assert result.exit_code == 2
    assert "unknown instruction" in result.output.lower() and "fly" in result.output.lower()


def test_no_engine_says_how_to_start_one(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    result = runner("image", "list")
    assert result.exit_code == 2
    assert "no Docker engine answers" in result.output and "dockerd" in result.output


def test_swr_login_derives_the_documented_credentials(runner, docker_env, registry, monkeypatch):
    """SWR's long-term login is REGION@AK with the hex HMAC-SHA256 of AK keyed by SK; the local
    registry is given that user (password computed by openssl, as SWR's docs do it)."""
    ak, sk = "AKSWRTEST0001", "secret-key-for-swr"
    key = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", sk], input=ak.encode(),
                         capture_output=True, check=True).stdout.decode().split()[-1]
    registry.add_user(f"cn-north-4@{ak}", key)
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", ak)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", sk)
    assert swr_credentials("swr.cn-north-4.myhuaweicloud.com") == (
        "swr.cn-north-4.myhuaweicloud.com", f"cn-north-4@{ak}", key)
    result = runner("image", "login", registry.host, "--swr", "--region", "cn-north-4")
    assert result.exit_code == 0, result.output
    assert sk not in result.output and key not in result.output


def test_ecr_token_from_the_aws_api(monkeypatch):
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        expected = boto3.client("ecr", region_name="eu-west-1").get_authorization_token(
            registryIds=["123456789012"])["authorizationData"][0]
        host, user, token = ecr_credentials("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    assert user == "AWS" and token and base64.b64decode(expected["authorizationToken"]).decode() == f"AWS:{token}"
    assert host == expected["proxyEndpoint"].split("://", 1)[1]


def test_login_needs_one_method(runner, docker_env):
    assert runner("image", "login", "example.com:5000").exit_code == 2
    assert runner("image", "login", "example.com:5000", "--password-stdin", input="x").exit_code == 2


@pytest.mark.parametrize("ref, parts", [
    ("faceops/train:gpu", ("docker.io", "faceops/train", "gpu")),
    ("127.0.0.1:5000/a/b:v1", ("127.0.0.1:5000", "a/b", "v1")),
    ("localhost/x", ("localhost", "x", "latest")),
    ("swr.cn-north-4.myhuaweicloud.com/team/train", ("swr.cn-north-4.myhuaweicloud.com", "team/train", "latest")),
])
def test_split_ref(ref, parts):
    assert split_ref(ref) == parts
