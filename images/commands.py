"""The ``image`` commands: build, push, login and list training images. Thin: they parse
arguments, call the images package and print; ``cli.py`` adds them to ``faceops``."""
from __future__ import annotations

import json
import sys

import click

from images import login
from images.build import DEFAULT_REPO, DEFAULT_TARGET, TARGETS, build
from images.catalog import list_images
from images.push import push
from jobs.core.commandline import FaceopsGroup


@click.group(cls=FaceopsGroup)
def image() -> None:
    """Build, push and list training images."""


def _key_values(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    """``("K=V", ...)`` -> dict; a pair without ``=`` is a usage error naming the option."""
    values = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        values[key] = value
    return values


@image.command("build")
@click.option("--target", type=click.Choice(list(TARGETS)), help=f"Which faceops image to build (default {DEFAULT_TARGET}).")
@click.option("--file", "-f", "dockerfile", type=click.Path(dir_okay=False), help="Build this Dockerfile instead (its folder is the context).")
@click.option("--tag", "-t", help=f"Image reference to tag (default {DEFAULT_REPO}:TARGET-CONTENTHASH).")
@click.option("--base", help="Build FROM this image instead of the Dockerfile's default base.")
@click.option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE", help="A build argument, e.g. PIP_OPTIONS=\"--index-url URL\".")
@click.option("--verbose", "-v", is_flag=True, help="Show every line of the build output, not only the steps.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def image_build(target: str | None, dockerfile: str | None, tag: str | None, base: str | None,
                build_args: tuple[str, ...], verbose: bool, as_json: bool) -> None:
    """Build a training image; an image whose Dockerfile, requirements and build args did not
    change is found by its content hash and not rebuilt. Prints the reference, id and size."""
    result = build(target=target or (None if dockerfile else DEFAULT_TARGET), dockerfile=dockerfile, tag=tag, base=base,
                   build_args=_key_values(build_args, "--build-arg"),
                   echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo, verbose=verbose)
    if as_json:
        click.echo(json.dumps({"ref": result.ref, "id": result.image_id, "size": result.size,
                               "content_hash": result.content_hash, "built": result.built}))
    else:
        click.echo(f"{result.ref}  {result.image_id}  {result.size / 1e6:.1f} MB")


@image.command("push")
@click.argument("ref")
@click.option("--registry", metavar="HOST[/NS]", help="Push to this registry (and namespace) under the image's name and tag.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def image_push(ref: str, registry: str | None, as_json: bool) -> None:
    """Push an image with one progress bar per layer (layers the registry has are skipped) and
    record its digest, so job versions name the image by digest. Log in first with `image login`."""
    result = push(ref, registry=registry, progress=not as_json, say=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps({"ref": result.ref, "digest": result.digest, "pinned": result.pinned,
                               "pushed_layers": result.pushed, "skipped_layers": result.skipped}))
    else:
        click.echo(f"{result.ref}: {len(result.pushed)} layers pushed, {len(result.skipped)} already there")
        click.echo(result.pinned)


@image.command("login")
@click.argument("registry")
@click.option("--username", "-u", help="User name (with --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password or token from standard input.")
@click.option("--ecr", is_flag=True, help="AWS ECR: get a token with the AWS credentials (boto3).")
@click.option("--swr", is_flag=True, help="Huawei SWR: derive the login from HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK.")
@click.option("--region", help="Region for --ecr/--swr when the registry host does not say it.")
def image_login(registry: str, username: str | None, password_stdin: bool, ecr: bool, swr: bool, region: str | None) -> None:
    """Log in to REGISTRY: the credentials are checked against it, then kept in the docker
    credential store or config (never printed). Needs one of --password-stdin, --ecr or --swr."""
    if sum((password_stdin, ecr, swr)) != 1:
        raise click.UsageError("give exactly one of --password-stdin (with --username), --ecr or --swr")
    if ecr:
        registry, username, password = login.ecr_credentials(registry, region)
    elif swr:
        registry, username, password = login.swr_credentials(registry, region)
    else:
        if not username:
            raise click.UsageError("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    path = login.login(registry, username, password, say=lambda line: click.echo(line, err=True))
    click.echo(f"Login to {registry} succeeded; credentials kept via {path}")


@image.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of images.")
def image_list(as_json: bool) -> None:
    """faceops-built images on the engine, with their size and the digest each pushed reference had."""
    rows = list_images()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no faceops images yet; build one with `faceops image build`")
    for row in rows:
        click.echo(f"{row['ref']:<60} {row['id'][7:19]:<13} {row['size'] / 1e6:>9.1f} MB  {row.get('digest') or '-'}")
