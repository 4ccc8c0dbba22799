"""``harvester``: run the service and administer it (tokens, images, queues)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from harvester.errors import HarvesterError
from harvester.terminal import print_listing, stdout_console

if TYPE_CHECKING:
    from types import FrameType

    from sqlalchemy.orm import Session, sessionmaker

    from harvester.context import HarvesterContext
    from harvester.images.cache import ImageInfo
    from harvester.settings import HarvesterSettings

app = typer.Typer(help="The hpcaf harvester service and its admin commands.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
image_app = typer.Typer(help="Container images in the image cache.", no_args_is_help=True)
queue_app = typer.Typer(help="PanDA queues.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(image_app, name="image")
app.add_typer(queue_app, name="queue")

console = stdout_console()
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="settings file (default $HPCAF_HOME/harvester.toml)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the rows as JSON")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


def _settings(config: Path | None) -> tuple[HarvesterSettings, dict[str, Any]]:
    from harvester.config import ensure_settings_file
    from harvester.settings import load_settings

    if config is None:
        from harvester.settings import SETTINGS_FILE_NAME, default_home

        path = default_home() / SETTINGS_FILE_NAME
        if ensure_settings_file(path):
            err.print(f"created default settings file {path}", highlight=False)
    elif not config.exists():
        raise _fail(f"settings file {config} does not exist")
    try:
        return load_settings(config)
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc


def _context(config: Path | None) -> HarvesterContext:
    from harvester.assembly import build_context

    settings, document = _settings(config)
    try:
        return build_context(settings, document)
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc


def _sessions(config: Path | None) -> sessionmaker[Session]:
    """The migrated database alone, for the token commands: without the assembly's imports
    and queue set-up, a token is made in half the time."""
    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade

    settings, _document = _settings(config)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    return make_sessionmaker(engine)


KEEP_ALIVE_S = 30
"""Pilots poll every few seconds; keep their connections open between polls."""


class Mode(StrEnum):
    all = "all"
    api = "api"
    agents = "agents"


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="listen address")] = None,
    port: Annotated[int | None, typer.Option(help="listen port")] = None,
    only: Annotated[Mode, typer.Option("--only", help="run only the API or only the agents")] = (
        Mode.all
    ),
    log_level: Annotated[str, typer.Option(help="logging level")] = "INFO",
    workers: Annotated[
        int, typer.Option(help="API processes (with --only api; run the agents separately)")
    ] = 1,
) -> None:
    """Run the REST API and the agents (splitter, brokerage, submitter, monitor, …)."""
    if workers < 1:
        raise _fail("--workers must be at least 1")
    if workers > 1 and only is not Mode.api:
        raise _fail(
            "--workers > 1 serves the API from several processes: give --only api, and run "
            "the agents once, in their own process (--only agents)"
        )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx = _context(config)
    if host is not None:
        ctx.settings.host = host
    if port is not None:
        ctx.settings.port = port
    s = ctx.settings
    err.print(
        f"hpcaf harvester\n  home:        {s.home}\n  settings:    {config or s.settings_file}\n"
        f"  database:    {ctx.engine.url.render_as_string(hide_password=True)}\n"
        f"  image cache: {s.resolved_image_cache}\n"
        f"  queues:      {', '.join(ctx.queues) or 'none'}\n"
        f"  listening:   http://{s.host}:{s.port} ({only.value})",
        highlight=False,
    )
    from harvester.assembly import build_agents, build_app, ensure_pilot_token

    if only is Mode.agents:
        ensure_pilot_token(ctx)
        runner = build_agents(ctx)
        runner.start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        runner.stop()
        return
    import uvicorn

    if workers > 1:  # each process builds its own context from the same settings
        ctx.engine.dispose()
        if config is not None:
            os.environ["HPCAF_SERVE_CONFIG"] = str(config.resolve())
        uvicorn.run(
            "harvester.assembly:api_app_from_environment",
            factory=True,
            workers=workers,
            host=s.host,
            port=s.port,
            log_level=log_level.lower(),
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        return
    application = build_app(ctx, with_agents=only is Mode.all)
    server_config = uvicorn.Config(
        application,
        host=s.host,
        port=s.port,
        log_level=log_level.lower(),
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
    )

    class Server(uvicorn.Server):
        """Ends the long polls first: uvicorn waits for the requests in flight to end
        before it stops, and a held acquire or endings poll would make it wait."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            ctx.activations.close()
            ctx.endings.close()
            super().handle_exit(sig, frame)

    Server(server_config).run()


class RoleChoice(StrEnum):
    user = "user"
    pilot = "pilot"
    admin = "admin"


@token_app.command("create")
def token_create(
    user: str,
    role: Annotated[RoleChoice, typer.Option(help="what the token may do")] = RoleChoice.user,
    config: ConfigOption = None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from db.models import Role
    from harvester.services.tokens import create_token

    sessions = _sessions(config)
    try:
        with sessions.begin() as session:
            token = create_token(session, user, Role(role.value))
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc
    print(token)


@token_app.command("revoke")
def token_revoke(
    user: str,
    token_id: Annotated[int | None, typer.Option("--id", help="only this token")] = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a user's tokens (all of them, or one by id)."""
    from harvester.services.tokens import revoke_tokens

    sessions = _sessions(config)
    try:
        with sessions.begin() as session:
            n = revoke_tokens(session, user, token_id)
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"revoked {n} token(s) of {user}")


@token_app.command("list")
def token_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List tokens (id, user, role, created, revoked); never the secrets."""
    from sqlalchemy import select

    from db.models import Token

    sessions = _sessions(config)
    with sessions() as session:
        rows = [
            {
                "id": t.id,
                "user": t.user,
                "role": t.role.value,
                "created": f"{t.created_at:%Y-%m-%d %H:%M}",
                "revoked": f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else None,
            }
            for t in session.scalars(select(Token).order_by(Token.id))
        ]
    print_listing(("id", "user", "role", "created", "revoked"), rows, as_json=as_json)


@image_app.command("build")
def image_build(
    definition: Annotated[Path, typer.Argument(help="an Apptainer definition file")],
    name: Annotated[str, typer.Option(help="image name in the cache")],
    mirror: Annotated[str | None, typer.Option(help="Debian mirror (default: the host's)")] = None,
    ca_bundle: Annotated[
        Path | None, typer.Option(help="CA bundle for pip inside the build (default: the host's)")
    ] = None,
    force: Annotated[bool, typer.Option(help="rebuild if it exists")] = False,
    config: ConfigOption = None,
) -> None:
    """Build an image into the cache (apptainer build, or debootstrap + the .def sections)."""
    from harvester.images.build import build_image

    ctx = _context(config)
    try:
        image = build_image(
            definition,
            name,
            ctx.images,
            mirror=mirror,
            ca_bundle=ca_bundle,
            force=force,
            log=lambda line: err.print(line, highlight=False),
        )
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"image {image.name}: {image.rootfs}")


@image_app.command("import")
def image_import(
    tarball: Annotated[Path, typer.Argument(help="a root-filesystem tarball")],
    name: Annotated[str, typer.Option(help="image name in the cache")],
    config: ConfigOption = None,
) -> None:
    """Import a root-filesystem tarball (e.g. from ``docker export``) as an image."""
    from harvester.images.build import import_image

    ctx = _context(config)
    try:
        image = import_image(tarball, name, ctx.images)
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"image {image.name}: {image.rootfs}")


@image_app.command("pull")
def image_pull(
    reference: Annotated[str, typer.Argument(help="docker://registry/repository:tag")],
    config: ConfigOption = None,
) -> None:
    """Pull a registry image into the site's cache ahead of the tasks that will need it."""
    from harvester.images.reference import RegistryReference
    from harvester.images.registry import RegistryClient

    ctx = _context(config)
    client = RegistryClient.for_site(ctx.images, ctx.settings)
    try:
        parsed = RegistryReference.parse(reference)
        resolved = client.resolve(parsed)
        image, pulled = client.pull(parsed, resolved)
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc
    done = "pulled" if pulled else "already in the cache"
    console.print(f"{parsed} is {resolved.digest}: {done} ({image.rootfs})", highlight=False)


@image_app.command("push")
def image_push(
    name: Annotated[str, typer.Argument(help="an image of the cache")],
    reference: Annotated[str, typer.Argument(help="docker://registry/repository:tag")],
    config: ConfigOption = None,
) -> None:
    """Publish an image of the cache to a registry (umoci packs it, skopeo copies it)."""
    import tempfile

    from harvester.images.reference import RegistryReference
    from harvester.images.registry import export_oci, push_layout

    ctx = _context(config)
    try:
        destination = RegistryReference.parse(reference)
        image = ctx.images.require(name)
        with tempfile.TemporaryDirectory(prefix="hpcaf-push-") as scratch:
            layout = Path(scratch) / "oci"
            export_oci(image, layout, "image")
            push_layout(
                layout,
                "image",
                destination,
                insecure=destination.registry in ctx.settings.insecure_registries,
            )
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"pushed {image.name} to {destination}", highlight=False)


@image_app.command("list")
def image_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Images in the cache: built or imported by name, and pulled from registries."""
    ctx = _context(config)
    rows = [
        {
            "name": image.name,
            "source": image.metadata.get("source"),
            "created": image.metadata.get("created"),
            "python": _python_of(image),
            "path": str(image.rootfs),
        }
        for image in ctx.images.list()
    ] + [
        {
            "name": image.metadata.get("name") or image.name,
            "source": image.metadata.get("source"),
            "created": image.metadata.get("pulled"),
            "python": _python_of(image),
            "path": str(image.rootfs),
        }
        for image in ctx.images.list_pulled()
    ]
    print_listing(("name", "source", "created", "python", "path"), rows, as_json=as_json)


def _python_of(image: ImageInfo) -> str:
    """``3.11 (cloudpickle 3.1.3)``: what ``hpcaf.Executor`` checks a client against."""
    python = image.python
    if python.version is None:
        return "none"
    return python.version + (f" (cloudpickle {python.cloudpickle})" if python.cloudpickle else "")


@queue_app.command("list")
def queue_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Queues with their provider, status, slot size and workers."""
    from harvester.services.queues import activated_counts, list_queues, worker_counts

    ctx = _context(config)
    with ctx.sessions() as session:
        workers = worker_counts(session)
        activated = activated_counts(session)
        rows = [
            {
                "queue": q.name,
                "provider": q.provider,
                "status": q.status.value,
                "cores": q.config.get("cores"),
                "memory_mb": q.config.get("memory_mb"),
                "gpus": q.config.get("gpus"),
                "maxWorkers": q.config.get("maxWorkers"),
                "workers": (
                    dict(sorted(workers.get(q.name, {}).items()))
                    if as_json
                    else ", ".join(f"{k}={v}" for k, v in sorted(workers.get(q.name, {}).items()))
                ),
                "activated": activated.get(q.name, 0),
            }
            for q in list_queues(session)
        ]
    columns = ("queue", "provider", "status", "cores", "memory_mb", "gpus", "maxWorkers")
    print_listing((*columns, "workers", "activated"), rows, as_json=as_json)


@queue_app.command("show")
def queue_show(name: str, config: ConfigOption = None) -> None:
    """One queue's full configuration."""
    import json

    ctx = _context(config)
    if name not in ctx.queues:
        raise _fail(f"unknown queue {name!r}")
    from harvester.services.queues import queue_status

    with ctx.sessions() as session:
        status = queue_status(session, name)
    document = ctx.queues[name].model_dump(mode="json", by_alias=True)
    document["status"] = status.value
    console.print_json(json.dumps(document))


class QueueStatusChoice(StrEnum):
    online = "online"
    offline = "offline"
    test = "test"


@queue_app.command("set-status")
def queue_set_status(name: str, status: QueueStatusChoice, config: ConfigOption = None) -> None:
    """Set a queue online, offline (no new workers) or test."""
    from db.models import QueueStatus
    from harvester.services.queues import set_queue_status

    ctx = _context(config)
    try:
        with ctx.sessions.begin() as session:
            set_queue_status(session, name, QueueStatus(status.value))
    except HarvesterError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"queue {name}: {status.value}")


def main() -> None:
    try:
        app()
    except HarvesterError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
