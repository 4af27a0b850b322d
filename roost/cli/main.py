"""The `roost` command line.

Start-up time matters (`roost ls` is typed all day): each command imports
what it needs inside its function, so pydantic, aiohttp, qemu.qmp and rich
load only for the commands that use them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from roost.cli.failures import fail, fail_on_file_system
from roost.errors import RoostError, UsageError

if TYPE_CHECKING:
    from roost.hostagent.apimodels import MountType


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RoostError as e:
            fail(e)
        except OSError as e:
            fail_on_file_system(e)
            raise


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from roost.store.instance import validate_name

    try:
        return validate_name(value)
    except UsageError as e:
        raise click.BadParameter(str(e)) from None


NAME = click.argument("name", callback=_name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="roost")
def cli() -> None:
    """roost runs Linux virtual machines and keeps them pleasant to live with."""


F = TypeVar("F", bound=Callable[..., Any])


def _source_options(note: str) -> Callable[[F], F]:
    """--config, --template and --set, shared by create and start."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help=f"roost.yaml to create the instance from{note}"),
        click.option("--template", "-t", metavar="TEMPLATE",
                     help=f"template to create the instance from{note} "
                          "(`roost template list`; default: default)"),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="set one key of the new configuration, e.g. cpus=4 or "
                          "mounts[0].writable=true (a YAML value; repeatable)"),
    ]

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@cli.command()
@NAME
@_source_options("")
@click.option("--cpus", type=int, help="virtual CPUs")
@click.option("--memory", help="memory, e.g. 2GiB")
@click.option("--disk", help="disk size, e.g. 20GiB")
def create(name: str, config_file: str | None, template: str | None, sets: tuple[str, ...],
           cpus: int | None, memory: str | None, disk: str | None) -> None:
    """Create an instance without starting it."""
    from roost.ops import instances

    inst = instances.create(name, config_file, template=template, sets=sets,
                            cpus=cpus, memory=memory, disk=disk)
    click.echo(f"created {name} in {inst.dir}")


START_TIMEOUT = click.option(
    "--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
    help="seconds for all of it (image download or build, disk, boot, readiness); on "
         "expiry it says which phase ran out")


@cli.command()
@click.argument("name", required=False, default="default", callback=_name)
@_source_options(" (new instances only)")
@START_TIMEOUT
def start(name: str, config_file: str | None, template: str | None, sets: tuple[str, ...],
          timeout: float) -> None:
    """Start an instance (creating it if needed) and wait until it is running.

    NAME defaults to `default`, as in Lima.
    """
    from roost.cli import start as start_mod

    sys.exit(start_mod.start(name, config_file, timeout, template=template, sets=sets))


@cli.command()
@NAME
@click.option("--force", "-f", is_flag=True, help="kill the VM instead of shutting it down")
@START_TIMEOUT
def restart(name: str, force: bool, timeout: float) -> None:
    """Stop a running instance, then start it again (a stopped one just starts)."""
    from roost.cli import start as start_mod
    from roost.store.instance import Instance, Status

    inst = Instance.at(name).require()
    if inst.status() == Status.SUSPENDED:
        raise UsageError(f"{name} is suspended; `roost resume {name}` brings it back, "
                         f"`roost stop --force {name}` drops its saved state")
    if inst.status() != Status.STOPPED:
        _stop(name, force=force)
    sys.exit(start_mod.start(name, None, timeout))


@cli.command()
@NAME
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="set one key, e.g. cpus=4 or mounts[0].writable=true (a YAML value; "
                   "repeatable); without --set, roost.yaml opens in $VISUAL or $EDITOR")
@click.option("--start", "start_after", is_flag=True, help="start the instance afterwards")
def edit(name: str, sets: tuple[str, ...], start_after: bool) -> None:
    """Change a stopped instance's roost.yaml; nothing invalid is saved."""
    from roost.cli import edit as editing

    changed = editing.edit(name, sets)
    click.echo(f"{name}: roost.yaml {'saved' if changed else 'unchanged'}")
    if start_after:
        from roost.cli import start as start_mod

        sys.exit(start_mod.start(name, None, 600.0))


def _names(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
           ) -> tuple[str, ...]:
    return tuple(_name(ctx, param, v) for v in value)


@cli.command()
@click.argument("names", nargs=-1, metavar="[NAME]...", callback=_names)
@click.option("--json", "as_json", is_flag=True, help="one JSON event a line, with its "
              "\"instance\"")
@click.option("--duration", type=click.FloatRange(min=0), metavar="SECONDS",
              help="stop after this long (default: until interrupted)")
def watch(names: tuple[str, ...], as_json: bool, duration: float | None) -> None:
    """Show the host agents' events as they happen: of every instance (also those
    started later), or of the NAMEs."""
    from roost.cli import watch as watching

    watching.watch(names, as_json, duration)


@cli.command()
@NAME
@click.argument("new_name", metavar="NEW_NAME", callback=_name)
def clone(name: str, new_name: str) -> None:
    """A new instance from a stopped one: its configuration and a copy of its disk,
    with a machine identity of its own (instance-id, SSH host keys, MAC, host name)."""
    from roost.ops import instances

    inst = instances.clone(name, new_name)
    click.echo(f"cloned {name} to {new_name} in {inst.dir}; `roost start {new_name}` boots it")


@cli.command()
@NAME
@click.argument("new_name", metavar="NEW_NAME", callback=_name)
@click.option("--snapshot", "tag", metavar="TAG",
              help="From NAME's snapshot TAG (NAME running, stopped or suspended): its disk "
                   "as it was then, and its memory when the snapshot holds it.")
def fork(name: str, new_name: str, tag: str | None) -> None:
    """A new instance from a suspended one that runs on from its saved memory
    (`roost start NEW_NAME`), or from a stopped one (as clone), or from a
    snapshot (--snapshot), with a machine identity of its own."""
    from roost.ops import fork as forking

    inst = forking.fork(name, new_name, tag)
    click.echo(f"forked {name} to {new_name} in {inst.dir}; `roost start {new_name}` runs it")


@cli.command()
@NAME
@click.argument("new_name", metavar="NEW_NAME", callback=_name)
def rename(name: str, new_name: str) -> None:
    """Give a stopped instance a new name."""
    from roost.ops import instances

    instances.rename(name, new_name)
    click.echo(f"renamed {name} to {new_name}")


@cli.command("factory-reset")
@NAME
def factory_reset(name: str) -> None:
    """Return a stopped instance to how it was created: a fresh disk and machine
    identity at its next start; roost.yaml is kept."""
    from roost.ops import instances

    removed = instances.factory_reset(name)
    click.echo(f"{name} reset ({len(removed)} files removed); `roost start {name}` boots it "
               "afresh")


@cli.command()
@NAME
def protect(name: str) -> None:
    """Refuse to delete the instance (also with --force) until `roost unprotect`."""
    from roost.ops import instances

    instances.set_protected(name, True)
    click.echo(f"{name} is protected: `roost delete` refuses it until `roost unprotect {name}`")


@cli.command()
@NAME
def unprotect(name: str) -> None:
    """Allow `roost delete` of the instance again."""
    from roost.ops import instances

    instances.set_protected(name, False)
    click.echo(f"{name} is no longer protected")


@cli.command()
@NAME
@click.option("--force", "-f", is_flag=True, help="kill the VM instead of shutting it down; "
              "for a suspended instance, drop its saved state (the disk stays)")
@click.option("--timeout", type=click.FloatRange(min=1), default=90.0, show_default=True)
def stop(name: str, force: bool, timeout: float) -> None:
    """Stop a running instance."""
    _stop(name, force=force, timeout=timeout)


def _stop(name: str, force: bool, timeout: float = 90.0) -> None:
    from roost.ops import instances

    outcome = instances.stop(name, force=force, timeout=timeout, on_progress=_note)
    click.echo(f"{name} {'is ' if outcome == instances.Stopped.NOT_RUNNING else ''}"
               f"{outcome.value}")


def _note(message: str) -> None:
    click.echo(message, err=True)


@cli.command()
@NAME
@click.option("--force", "-f", is_flag=True, help="stop the instance first if it runs")
def delete(name: str, force: bool) -> None:
    """Delete an instance and its disk."""
    from roost.ops import instances

    if instances.delete(name, force=force, on_progress=_note):
        click.echo(f"{name} stopped")
    click.echo(f"deleted {name}")


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per instance, in a list "
              "(the same as --format json)")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True)
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="only instances whose `ls --json` field KEY is VALUE (any case), e.g. "
                   "status=Running; repeatable: all must match")
def ls(as_json: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List instances."""
    from roost.cli import listing

    listing.ls(as_json, fmt, [listing.parse_filter(f) for f in filters])


@cli.command()
@NAME
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(name: str, as_json: bool) -> None:
    """Show an instance's configuration and runtime state."""
    from roost.cli import listing

    listing.info(name, as_json)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--workdir", metavar="DIR", help="the guest directory to start in (default: "
              "the guest user's home)")
@NAME
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def shell(workdir: str | None, name: str, command: tuple[str, ...]) -> None:
    """Open a shell in the instance, or run COMMAND (after --) there.

    The exit status of COMMAND is passed through.
    """
    import os

    from roost.ops import instances

    words = list(command)
    if words[:1] == ["--"]:
        words = words[1:]
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    argv = instances.shell_argv(name, words, workdir=workdir, tty=tty)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


@cli.command("copy", context_settings={"ignore_unknown_options": False})
@click.argument("paths", nargs=-1, required=True, metavar="SOURCE... DEST")
@click.option("--recursive", "-r", is_flag=True, help="copy directories, and what is in them")
@click.option("--verbose", "-v", is_flag=True, help="show the command run, and the tool's "
              "own verbose output")
@click.option("--backend", type=click.Choice(["auto", "scp", "rsync"]), default="auto",
              show_default=True, help="auto: rsync when the host and the instance both "
              "have it, else scp")
def copy(paths: tuple[str, ...], recursive: bool, verbose: bool, backend: str) -> None:
    """Copy files between the host and instances (also `roost cp`).

    A path in an instance is NAME:PATH, relative to the guest user's home
    unless absolute; both ends may be in instances. The exit status of scp or
    rsync is passed through.

    \b
      roost copy ./notes.txt dev:/tmp/
      roost copy -r dev:project ./project-copy
      roost copy dev:/etc/os-release other:/tmp/
    """
    from roost.ops import copy as copying

    sys.exit(copying.copy(paths, recursive=recursive, verbose=verbose,
                          backend=backend))  # type: ignore[arg-type]


cli.add_command(click.Command("cp", params=copy.params, callback=copy.callback,
                              help="Copy files between the host and instances (as `copy`).",
                              hidden=True))


def _disk_names(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                ) -> tuple[str, ...]:
    from roost.store.disks import validate_disk_name

    try:
        return tuple(validate_disk_name(v) for v in value)
    except UsageError as e:
        raise click.BadParameter(str(e)) from None


@cli.group()
def disk() -> None:
    """Disks that outlive instances (roost.yaml's additionalDisks), as Lima's."""


@disk.command("create")
@click.argument("name")
@click.option("--size", required=True, help="e.g. 10GiB")
@click.option("--format", "fmt", type=click.Choice(["qcow2", "raw"]), default="qcow2",
              show_default=True, help="qcow2 keeps VM snapshots working")
def disk_create(name: str, size: str, fmt: str) -> None:
    """Create a disk; an instance formats it (ext4) when it first attaches it."""
    from roost.cli import disks

    disks.create(name, size, fmt)


@disk.command("import")
@click.argument("name")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["qcow2", "raw"]), default="qcow2",
              show_default=True)
def disk_import(name: str, source: str, fmt: str) -> None:
    """Create disk NAME as a copy of the disk image SOURCE (qcow2, raw, vmdk, ...)."""
    from roost.cli import disks

    disks.import_(name, source, fmt)


@disk.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def disk_ls(as_json: bool) -> None:
    """Disks, their size and format, and the instance using each."""
    from roost.cli import disks

    disks.list_disks(as_json)


@disk.command("delete")
@click.argument("names", nargs=-1, required=True, callback=_disk_names)
def disk_delete(names: tuple[str, ...]) -> None:
    """Delete disks (refused while a running instance uses one)."""
    from roost.cli import disks

    disks.delete(names)


@disk.command("resize")
@click.argument("name", callback=lambda c, p, v: _disk_names(c, p, (v,))[0])
@click.option("--size", required=True, help="the new size, e.g. 20GiB (only larger)")
def disk_resize(name: str, size: str) -> None:
    """Grow a disk that no running instance uses."""
    from roost.cli import disks

    disks.resize(name, size)


@disk.command("unlock")
@click.argument("names", nargs=-1, required=True, callback=_disk_names)
def disk_unlock(names: tuple[str, ...]) -> None:
    """Forget which instance uses these disks (after a crash, say)."""
    from roost.cli import disks

    disks.unlock(names)


@cli.group()
def image() -> None:
    """Manage guest images."""


@image.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def image_list(as_json: bool) -> None:
    """Cached images: cloud images (by location and digest) and built-in ones,
    with the instances made from each."""
    from roost.cli import images

    images.list_images(as_json)


@image.command("pull")
@click.argument("location")
@click.option("--digest", help="sha256:<hex> or sha512:<hex> the download must match")
def image_pull(location: str, digest: str | None) -> None:
    """Download the cloud image at LOCATION (a URL or a path) into the cache;
    prints where it is."""
    from roost.cli import images

    images.pull(location, digest)


@image.command("rm")
@click.argument("location_or_digest")
@click.option("--force", "-f", is_flag=True,
              help="remove it even while instances are made from it (their disks break)")
def image_rm(location_or_digest: str, force: bool) -> None:
    """Remove a cached cloud image, named by its location or digest."""
    from roost.cli import images

    images.rm(location_or_digest, force)


@image.command("prune")
@click.option("--dry-run", is_flag=True, help="only show what would be removed")
def image_prune(dry_run: bool) -> None:
    """Remove cached images no instance uses: cloud images and unfinished
    downloads, built-in images but the newest."""
    from roost.cli import images

    images.prune_images(dry_run)


@image.command("build")
@click.argument("which", type=click.Choice(["builtin", "debian-12"]), default="builtin")
def image_build(which: str) -> None:
    """Build (or find in the cache) an image roost makes from Debian packages:
    the built-in micro image, or debian-12."""
    from roost.cli.progress import Progress

    img: Any
    with Progress(f"{which} image") as progress:
        if which == "debian-12":
            from roost.image.debian import ensure_debian_image

            img = ensure_debian_image(progress.step)
        else:
            from roost.image.builtin import ensure_builtin_image

            img = ensure_builtin_image(progress.step)
    if "buildSeconds" in img.manifest:
        click.echo(f"built in {img.manifest['buildSeconds']}s (cached for later starts)")
    sizes = img.manifest["sizes"]
    assert isinstance(sizes, dict)
    click.echo(f"{img.directory}")
    for key, value in sizes.items():
        click.echo(f"  {key}: {value / 1024**2:.1f} MiB")


@cli.group("template")
def template_() -> None:
    """Built-in templates to create instances from (`roost create NAME -t TEMPLATE`)."""


@template_.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def template_list(as_json: bool) -> None:
    """Templates: name, what they boot, description."""
    from roost.cli import templates

    templates.listing(as_json)


@template_.command("show")
@click.argument("template")
def template_show(template: str) -> None:
    """The configuration TEMPLATE (a name or a YAML file) makes, its bases merged in."""
    from roost.cli import templates

    templates.show(template)


@cli.group()
def mount() -> None:
    """Share host folders with a running instance, without a restart."""


@mount.command("add")
@NAME
@click.argument("host_path", type=click.Path(exists=True, file_okay=False))
@click.argument("guest_path")
# The choices are apimodels.MountType's (a test checks); not imported: start-up time.
@click.option("--type", "kind", type=click.Choice(["virtiofs", "9p", "reverse-sshfs"]),
              help="default: the instance's mountType (virtiofs where virtiofsd exists)")
@click.option("--writable", is_flag=True, help="let the guest write (default: read-only)")
def mount_add(name: str, host_path: str, guest_path: str, kind: MountType | None,
              writable: bool) -> None:
    """Mount HOST_PATH at GUEST_PATH in the running instance NAME."""
    from roost.cli import mounts

    mounts.add(name, host_path, guest_path, kind, writable)


@mount.command("remove")
@NAME
@click.argument("guest_path")
@click.option("--force", is_flag=True,
              help="even when busy or its server died: I/O on it in the guest then fails")
def mount_remove(name: str, guest_path: str, force: bool) -> None:
    """Unmount GUEST_PATH (a runtime mount) and detach its device."""
    from roost.cli import mounts

    mounts.remove(name, guest_path, force)


@mount.command("list")
@NAME
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def mount_list(name: str, as_json: bool) -> None:
    """Static and runtime mounts of NAME."""
    from roost.cli import mounts

    mounts.listing(name, as_json)


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@NAME
@click.option("--timeout", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="after SECONDS, SIGTERM the command's process group, SIGKILL it 2 s "
                   "later, and exit 124, as timeout(1) does (0: no limit)")
@click.option("-t", "--tty", is_flag=True,
              help="run the command on a pseudo-terminal, for shells and other interactive "
                   "programs; Ctrl-C then goes to the command, as with ssh -t")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_(name: str, timeout: float, tty: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND (after --) through the guest agent, without SSH (dev only:
    needs guestAgent.allowExec: true).

    Stdin is passed on and the exit status is the command's (127: not found).
    Ctrl-C kills the command's process group in the guest and exits 130."""
    from roost.cli import guest

    sys.exit(guest.execute(name, list(command), timeout, tty))


@cli.command()
@NAME
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(name: str, as_json: bool) -> None:
    """Whether the guest is idle or busy (runnable tasks, sampled by the guest agent)."""
    from roost.cli import guest

    guest.status(name, as_json)


@cli.command()
@NAME
def suspend(name: str) -> None:
    """Save the running VM's state to disk and stop it (resume brings it back)."""
    from roost.ops import instances

    done = instances.suspend(name)
    detached = done.detached_mounts
    note = f"; shared folders {', '.join(detached)} come back on resume" if detached else ""
    click.echo(f"{name} suspended in {done.seconds:.2f}s "
               f"(state saved in {done.save_seconds}s){note}")


@cli.command()
@NAME
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0,
              help="seconds to wait for the instance to be running")
def resume(name: str, timeout: float) -> None:
    """Bring a suspended instance back where it was."""
    from roost.cli.start import start as start_instance
    from roost.store.instance import Instance, Status

    inst = Instance.at(name).require()
    if inst.status() != Status.SUSPENDED:
        raise RoostError(f"instance {name!r} is {inst.status().value.lower()}, not suspended")
    sys.exit(start_instance(name, None, timeout))


@cli.group()
def snapshot() -> None:
    """qcow2 snapshots: with VM state while running, of the disk while stopped."""


TAG = click.option("--tag", required=True, help="the snapshot's name")


@snapshot.command("create")
@NAME
@TAG
def snapshot_create(name: str, tag: str) -> None:
    """Take a snapshot."""
    from roost.cli import snapshot as snap

    snap.create(name, tag)


@snapshot.command("apply")
@NAME
@TAG
def snapshot_apply(name: str, tag: str) -> None:
    """Go back to a snapshot (a running VM jumps back with its memory)."""
    from roost.cli import snapshot as snap

    snap.apply(name, tag)


@snapshot.command("delete")
@NAME
@TAG
def snapshot_delete(name: str, tag: str) -> None:
    """Delete a snapshot."""
    from roost.cli import snapshot as snap

    snap.delete(name, tag)


@snapshot.command("list")
@NAME
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def snapshot_list(name: str, as_json: bool) -> None:
    """List snapshots."""
    from roost.cli import snapshot as snap

    snap.listing(name, as_json)


@cli.command("diff")
@NAME
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def diff_(name: str, as_json: bool) -> None:
    """What changed in the guest's file system since boot (needs readOnlyRoot: true):
    + created, ~ modified, - deleted."""
    from roost.cli import guest

    guest.show_diff(name, as_json)


@cli.command()
@NAME
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def health(name: str, as_json: bool) -> None:
    """Health checks of the services in the guest."""
    from roost.cli import guest

    guest.health(name, as_json)


@cli.command()
@NAME
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def probes(name: str, as_json: bool) -> None:
    """Latest results of the guest's probes (/etc/roost/probes.d)."""
    from roost.cli import guest

    guest.probes(name, as_json)


@cli.command()
@NAME
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
@click.option("-n", "lines", type=click.IntRange(min=0), default=50, show_default=True,
              help="lines to show first")
@click.option("--source", type=click.Choice(["serial", "hostagent", "guestagent"]),
              default="serial", show_default=True, help="the guest console, the host "
              "agent's log, or the guest agent's log (over SSH)")
def logs(name: str, follow: bool, lines: int, source: str) -> None:
    """Show an instance's logs."""
    from roost.cli import guest

    sys.exit(guest.logs(name, source, lines, follow))


@cli.command(hidden=True)
@click.argument("name")
def hostagent(name: str) -> None:
    """Run the host agent of NAME (started by `roost start`)."""
    from roost.hostagent.main import main as hostagent_main

    sys.exit(hostagent_main(name))


def main() -> None:
    cli(prog_name="roost")
