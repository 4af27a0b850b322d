"""The instance configuration (roost.yaml), validated by a pydantic schema.

Keys are camelCase as in Lima's lima.yaml. Unknown keys, wrong types and
bad values are errors that name the key path.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from roost.config.sizes import format_size, parse_size
from roost.errors import cut, quote
from roost.store.instance import MAX_SOCKET_PATH
from roost_guest.protocol import guest_mount_point_problem


def _size(value: Any) -> int:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB or 4GiB")
    return parse_size(value)


def _host_dir(v: str) -> str:
    """An existing host directory, absolute and normalised (~ expanded)."""
    if "\0" in v or "\n" in v:
        raise ValueError(f"a host path cannot hold a NUL or a newline, got {quote(v)}")
    v = os.path.expanduser(v)
    if not os.path.isabs(v):
        raise ValueError(f"must be an absolute host path (or start with ~), got {quote(v)}")
    v = os.path.normpath(v)
    if not os.path.exists(v):
        raise ValueError(f"{quote(v)} does not exist on the host; create the folder or "
                         "fix the path")
    if not os.path.isdir(v):
        raise ValueError(f"{quote(v)} is not a directory; a mount shares a folder")
    return v


def _guest_mount_point(v: str) -> str:
    """An absolute guest path outside the system directories, normalised."""
    if not v.startswith("/"):
        raise ValueError(f"must be an absolute guest path, got {quote(v)}")
    problem = guest_mount_point_problem(v)
    if problem:
        raise ValueError(cut(problem))
    return os.path.normpath(v)


def _socket_path(v: str, where: str) -> str:
    if "\0" in v:
        raise ValueError(f"a socket path cannot hold a NUL, got {quote(v)}")
    if len(v.encode()) > MAX_SOCKET_PATH:
        raise ValueError(f"a Unix socket path is at most {MAX_SOCKET_PATH} bytes, "
                         f"got {len(v.encode())}")
    if not v.startswith("/"):
        raise ValueError(f"must be an absolute {where} path, got {quote(v)}")
    return v


Size = Annotated[int, BeforeValidator(_size), PlainSerializer(format_size, return_type=str)]
Port = Annotated[int, Field(ge=0, le=65535)]
BUILTIN_IMAGE = "builtin"
# Images roost builds itself from Debian packages (no download but packages).
BUILT_IMAGES = (BUILTIN_IMAGE, "debian-12")
MOUNT_TYPES = ("virtiofs", "9p", "reverse-sshfs")


def _alias(name: str) -> str:
    # Lima spells "IP" in capitals: guestIP, hostIP, guestIPMustBeZero.
    return to_camel(name).replace("Ip", "IP")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=_alias, populate_by_name=True, frozen=True,
        strict=False,
    )


class SSH(_Model):
    local_port: Port = 0
    forward_agent: bool = False


class NinePOptions(_Model):
    # mapped-xattr: the guest's owners and modes are kept in xattrs, every file on the
    # host stays QEMU's user's ("none" under a root QEMU lets the guest chown to anyone).
    security_model: Literal["none", "mapped-xattr", "mapped-file", "passthrough"] = "mapped-xattr"
    protocol_version: Literal["9p2000", "9p2000.u", "9p2000.L"] = "9p2000.L"
    msize: Size = 512 * 1024
    cache: Literal["none", "loose", "fscache", "mmap"] | None = None


class VirtiofsOptions(_Model):
    queue_size: Annotated[int, Field(ge=16, le=32768)] = 1024


class SSHFSOptions(_Model):
    cache: bool = True
    follow_symlinks: bool = False


class Mount(_Model):
    location: str
    mount_point: str | None = None
    writable: bool = False
    nine_p: NinePOptions = Field(default_factory=NinePOptions, alias="9p")
    virtiofs: VirtiofsOptions = Field(default_factory=VirtiofsOptions)
    sshfs: SSHFSOptions = Field(default_factory=SSHFSOptions)

    _check_location = field_validator("location")(classmethod(lambda cls, v: _host_dir(v)))

    @field_validator("mount_point")
    @classmethod
    def _mount_point(cls, v: str | None) -> str | None:
        return None if v is None else _guest_mount_point(v)

    @model_validator(mode="after")
    def _location_as_mount_point(self) -> Mount:
        # Without mountPoint, the guest sees the folder at its host path.
        problem = "" if self.mount_point else guest_mount_point_problem(self.location)
        if problem:
            problem = cut(problem).removesuffix("; choose another guest path")
            raise ValueError(f"without a mountPoint the guest path is the location, and "
                             f"{problem}; give a mountPoint")
        return self

    def guest_path(self) -> str:
        return self.mount_point or self.location


def _ip(v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"not an IP address: {quote(v)}") from None
    return v


PortRange = tuple[Annotated[int, Field(ge=1, le=65535)], Annotated[int, Field(ge=1, le=65535)]]


class PortForward(_Model):
    """One rule, with Lima's fields and defaults."""

    guest_ip: str = "127.0.0.1"
    guest_ip_must_be_zero: bool = False
    guest_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    guest_port_range: PortRange | None = None
    guest_socket: str | None = None
    host_ip: str = "127.0.0.1"
    host_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    host_port_range: PortRange | None = None
    host_socket: str | None = None
    proto: Literal["tcp", "udp", "any"] = "any"
    ignore: bool = False
    reverse: bool = False

    _check_guest_ip = field_validator("guest_ip")(classmethod(lambda cls, v: _ip(v)))
    _check_host_ip = field_validator("host_ip")(classmethod(lambda cls, v: _ip(v)))

    @model_validator(mode="before")
    @classmethod
    def _must_be_zero_fills_in(cls, data: Any) -> Any:
        # As Lima: guestIPMustBeZero alone means guestIP 0.0.0.0.
        if isinstance(data, dict) and data.get("guestIPMustBeZero", data.get(
                "guest_ip_must_be_zero")) is True and "guestIP" not in data \
                and "guest_ip" not in data:
            return {**data, "guestIP": "0.0.0.0"}
        return data

    @model_validator(mode="after")
    def _ranges(self) -> PortForward:
        for name, rng in (("guestPortRange", self.guest_port_range),
                          ("hostPortRange", self.host_port_range)):
            if rng is not None and rng[0] > rng[1]:
                raise ValueError(f"{name}: start {rng[0]} is above end {rng[1]}")
        if self.guest_port is not None and self.guest_port_range is not None:
            raise ValueError("give guestPort or guestPortRange, not both")
        if self.host_port is not None and self.host_port_range is not None:
            raise ValueError("give hostPort or hostPortRange, not both")
        g, h = self.guest_range(), self.host_range()
        if g and h and g[1] - g[0] != h[1] - h[0]:
            raise ValueError("hostPortRange must span as many ports as guestPortRange")
        if self.host_socket and self.guest_socket is None and not self.reverse:
            # Lima's guestPort -> hostSocket: one guest TCP port to a host socket.
            if self.guest_port is None:
                raise ValueError("hostSocket needs guestSocket or a single guestPort "
                                 "(or reverse: true)")
            if self.proto == "udp":
                raise ValueError("hostSocket forwards TCP: drop proto: udp")
            if self.host_port is not None or self.host_port_range is not None:
                raise ValueError("give hostSocket or hostPort, not both")
        if self.reverse and not (self.guest_socket and self.host_socket):
            raise ValueError("reverse forwarding needs both guestSocket and hostSocket")
        if self.guest_ip_must_be_zero and not ipaddress.ip_address(self.guest_ip).is_unspecified:
            raise ValueError("guestIPMustBeZero needs guestIP 0.0.0.0 (or ::)")
        return self

    @field_validator("guest_socket")
    @classmethod
    def _guest_socket(cls, v: str | None) -> str | None:
        return None if v is None else _socket_path(v, "guest")

    @field_validator("host_socket")
    @classmethod
    def _host_socket(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = os.path.expanduser(v)
        if not v.startswith("/"):
            # As Lima: under the instance's sock/ directory (made absolute at start).
            if "\0" in v or ".." in v.split("/") or not v.strip("/."):
                raise ValueError(f"a relative hostSocket names a socket in the instance's "
                                 f"sock/ directory, without '..'; got {quote(v)}")
            return os.path.normpath(v)
        return _socket_path(v, "host")

    def in_instance(self, sock_dir: Path) -> PortForward:
        """This rule with a relative hostSocket made absolute under `sock_dir`."""
        if self.host_socket is None or self.host_socket.startswith("/"):
            return self
        path = _socket_path(str(sock_dir / self.host_socket), "host")
        return self.model_copy(update={"host_socket": path})

    def guest_range(self) -> tuple[int, int] | None:
        if self.guest_port_range is not None:
            return self.guest_port_range
        if self.guest_port is not None:
            return (self.guest_port, self.guest_port)
        return None

    def host_range(self) -> tuple[int, int] | None:
        if self.host_port_range is not None:
            return self.host_port_range
        if self.host_port is not None:
            return (self.host_port, self.host_port)
        return self.guest_range()


ProvisionMode = Literal["boot", "dependency", "data", "system", "user"]
# Lima's order: every boot, `boot` first (cloud-init bootcmd), then the rest.
PROVISION_ORDER: tuple[str, ...] = get_args(ProvisionMode)


class Provision(_Model):
    """One provisioning step, with Lima's modes and `data` fields."""

    mode: ProvisionMode = "system"
    script: str | None = None
    # mode: data
    path: str | None = None
    content: str | None = None
    owner: str = "root:root"
    permissions: Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")] = "644"
    overwrite: bool = True

    @model_validator(mode="after")
    def _fields_of_mode(self) -> Provision:
        if self.mode == "data":
            if self.path is None or self.content is None:
                raise ValueError("mode data needs path and content")
            if not self.path.startswith("/"):
                raise ValueError(f"path must be an absolute guest path, got {quote(self.path)}")
            if self.script is not None:
                raise ValueError("mode data takes path and content, not script")
        else:
            if self.script is None:
                raise ValueError(f"mode {self.mode} needs a script")
            if self.path is not None or self.content is not None:
                raise ValueError(f"path and content belong to mode data, not {self.mode}")
        return self


Arch = Literal["x86_64", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x"]
DIGEST_PATTERN = r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$"
Digest = Annotated[str, Field(pattern=DIGEST_PATTERN)]


def _location(v: str) -> str:
    """https://, http://, file:// or an absolute path (~ expanded)."""
    if v.startswith(("https://", "http://")):
        if len(v.split("://", 1)[1].split("/", 1)[0]) == 0:
            raise ValueError(f"no host in URL {quote(v)}")
        return v
    if v.startswith("file://"):
        v = v[len("file://"):]
    v = os.path.expanduser(v)
    if not os.path.isabs(v):
        raise ValueError(
            f"must be an https://, http:// or file:// URL or an absolute path, got {quote(v)}")
    return v


class ImageFile(_Model):
    """A kernel or initrd that goes with an image (Lima's images[].kernel/initrd)."""

    location: str
    digest: Digest | None = None
    cmdline: str | None = None  # kernel only: the kernel command line

    _check_location = field_validator("location")(classmethod(lambda cls, v: _location(v)))


class Image(_Model):
    """One entry of `images:`; the first for the host's arch is used."""

    location: str
    arch: Arch = "x86_64"
    digest: Digest | None = None
    kernel: ImageFile | None = None
    initrd: ImageFile | None = None

    _check_location = field_validator("location")(classmethod(lambda cls, v: _location(v)))

    @model_validator(mode="after")
    def _initrd_needs_kernel(self) -> Image:
        if self.initrd is not None and self.kernel is None:
            raise ValueError("initrd needs kernel")
        if self.initrd is not None and self.initrd.cmdline is not None:
            raise ValueError("cmdline belongs to kernel, not initrd")
        return self


class Firmware(_Model):
    # Lima's key. roost boots SeaBIOS unless this is false (then UEFI, OVMF).
    legacy_bios: bool = Field(True, alias="legacyBIOS")


HOST_PATH_VARIABLES = ("{{.Dir}}", "{{.Home}}", "{{.Name}}", "{{.User}}", "{{.UID}}")


class CopyToHost(_Model):
    """Lima's copyToHost: a guest file copied to the host once provisioning is done.

    `host` may start with Lima's {{.Dir}} (the instance directory) or
    {{.Home}}; {{.Name}}, {{.User}} and {{.UID}} may appear anywhere.
    """

    guest: str
    host: str
    delete_on_stop: bool = False
    skip_if_missing: bool = False

    @field_validator("guest")
    @classmethod
    def _guest(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must be an absolute guest path, got {quote(v)}")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = os.path.expanduser(v)
        for part in v.split("{{")[1:]:
            if "{{" + part.split("}}", 1)[0] + "}}" not in HOST_PATH_VARIABLES:
                raise ValueError(f"unknown variable in {quote(v)}; known: "
                                 f"{', '.join(HOST_PATH_VARIABLES)}")
        rooted = v.startswith(("{{.Dir}}/", "{{.Home}}/"))
        if not (rooted or os.path.isabs(v)):
            raise ValueError("must be an absolute host path (or start with ~, {{.Dir}}/ or "
                             f"{{{{.Home}}}}/), got {quote(v)}")
        if "\0" in v or any(part == ".." for part in v.split("/")):
            raise ValueError(f"must not contain '..' or a NUL, got {quote(v)}")
        return v


def _env_value(v: Any) -> Any:
    # Lima's env is text; YAML reads `DEBUG: 1` or `--set env.DEBUG=1` as a
    # number, which is meant as the text it was written as.
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return v


def _env_text(v: str) -> str:
    # pam_env (/etc/environment) has no escapes: one line, no double quote.
    if "\n" in v or '"' in v or "\0" in v:
        raise ValueError('an environment value cannot hold a newline or a double quote (")')
    return v


EnvValue = Annotated[str, BeforeValidator(_env_value), AfterValidator(_env_text)]


class GuestAgent(_Model):
    allow_exec: bool = False
    # Files through the guest agent (read, write, list, watch...): a permission
    # of its own, so a sandbox can move files with no way to run commands.
    allow_files: bool = False


class HealthCheck(_Model):
    """Written to the guest's /etc/roost/integrations.d/NAME.json at boot."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    health_cmd: str | list[str]
    health_interval_secs: Annotated[float, Field(ge=0.2)] = 10.0
    health_timeout_secs: Annotated[float, Field(gt=0)] = 5.0
    startup_grace_secs: Annotated[float, Field(ge=0)] = 0.0
    checkpoint_cmd: str | list[str] | None = None
    restore_cmd: str | list[str] | None = None

    def guest_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(by_alias=False).items() if v is not None}


class AdditionalDisk(_Model):
    """A disk made by `roost disk create`, attached at start and mounted at
    /mnt/roost-NAME (Lima's additionalDisks; a bare name is {name: NAME})."""

    name: str
    format: bool = True  # make a file system on it when it has none
    fs_type: Literal["ext4"] = "ext4"

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _disk_name(cls, v: str) -> str:
        from roost.store.disks import DISK_NAME

        if not DISK_NAME.match(v):
            raise ValueError(f"{quote(v)} is no disk name: 1-20 of a-z, 0-9 and -")
        return v


PEM_BEGIN, PEM_END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


def _pem_certificates(v: str) -> str:
    text = v.strip()
    if not text.startswith(PEM_BEGIN) or not text.endswith(PEM_END):
        raise ValueError(f"not a PEM certificate: it must start with {PEM_BEGIN} and end "
                         f"with {PEM_END}")
    return text + "\n"


class CACerts(_Model):
    """Lima's caCerts: CA certificates the guest trusts, beside its own or,
    with removeDefaults, instead of them."""

    remove_defaults: bool | None = None
    files: list[str] = Field(default_factory=list)
    certs: list[Annotated[str, AfterValidator(_pem_certificates)]] = Field(
        default_factory=list)

    @field_validator("files")
    @classmethod
    def _readable_pem_files(cls, v: list[str]) -> list[str]:
        paths = []
        for raw in v:
            path = os.path.expanduser(raw)
            if not path.startswith("/"):
                raise ValueError(f"{quote(raw)}: must be an absolute host path (or start with ~)")
            _pem_certificates(_read_pem(path))
            paths.append(path)
        return paths

    def trusted(self) -> list[str]:
        """Every certificate, inline and from the files (read now)."""
        return [*self.certs, *(_pem_certificates(_read_pem(p)) for p in self.files)]

    def wanted(self) -> bool:
        return bool(self.certs or self.files or self.remove_defaults)


def _read_pem(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read(1 << 20)
    except UnicodeDecodeError:
        raise ValueError(f"{quote(path)} is not PEM text") from None
    except OSError as e:
        raise ValueError(f"cannot read {quote(path)}: {e.strerror or e}") from None


class Network(_Model):
    """What the guest may reach. `internet: false` cuts it off: QEMU's user
    network (slirp) runs restricted, so nothing the guest sends leaves it:
    no host, no internet, no DNS. What the host opens still works (SSH,
    port forwards, the guest agent's channel, mounts).

    `allowOut` (with `internet: false`) lets these destinations through the
    host agent's egress proxy, which the guest's proxy variables name
    (roost.config.allowout has the forms; see docs/network.md)."""

    internet: bool = True
    allow_out: list[str] = Field(default_factory=list)

    @field_validator("allow_out")
    @classmethod
    def _check_allow_out(cls, v: list[str]) -> list[str]:
        from roost.config.allowout import AllowList

        AllowList.parse(v)
        return v

    @model_validator(mode="after")
    def _allow_out_needs_cut_off(self) -> Network:
        if self.allow_out and self.internet:
            raise ValueError("allowOut is the exception to `internet: false`: "
                             "set network.internet: false with it")
        return self


class TimeoutPolicy(_Model):
    after: Annotated[float, Field(gt=0)]  # seconds from Running
    action: Literal["delete", "suspend", "stop"] = "delete"


class IdlePolicy(_Model):
    after: Annotated[float, Field(gt=0)]  # seconds idle (the guest agent's worker status)
    action: Literal["suspend", "stop"] = "suspend"


class Lifecycle(_Model):
    """What the host agent does to a sandbox on its own: after `timeout` from
    Running, or once the guest has been idle `idle.after` seconds."""

    timeout: TimeoutPolicy | None = None
    idle: IdlePolicy | None = None


DNS_NAME = re.compile(r"^(?=.{1,253}\.?$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$")


def _host_target(v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        if not DNS_NAME.match(v):
            raise ValueError(f"{quote(v)} is neither an IP address nor a host name") from None
    return v


def _host_name(v: str) -> str:
    if not DNS_NAME.match(v):
        raise ValueError(f"{quote(v)} is no host name (labels of letters, digits and -, "
                         "dot-separated)")
    return v


class HostResolver(_Model):
    """Lima's hostResolver: the guest's DNS is a server in the host agent
    (roost/hostagent/dns.py), answering as the host's resolver does."""

    enabled: bool = True
    ipv6: bool = False  # AAAA answers for names the host resolves (Lima's default: none)
    hosts: dict[Annotated[str, AfterValidator(_host_name)],
                Annotated[str, AfterValidator(_host_target)]] = Field(default_factory=dict)


class Worker(_Model):
    """Idle/busy: busy while more than busyThreshold tasks are runnable."""

    busy_threshold: Annotated[float, Field(ge=0)] = 0.5
    sample_secs: Annotated[float, Field(ge=0.1, le=3600)] = 1.0


def _repeated(names: list[str]) -> list[str]:
    """The names given more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


class Config(_Model):
    cpus: Annotated[int, Field(ge=1, le=255)] = 2
    memory: Size = 2 * 1024**3
    disk: Size = 20 * 1024**3
    image: str = BUILTIN_IMAGE
    # Cloud images by URL and digest (Lima's `images:`); when given, `image`
    # must stay at its default.
    images: list[Image] = Field(default_factory=list)
    firmware: Firmware = Field(default_factory=lambda: Firmware.model_validate({}))
    # QEMU's -cpu under TCG; None picks one current distributions accept.
    cpu_type: str | None = None
    mount_types_unsupported: list[Literal["virtiofs", "9p", "reverse-sshfs"]] = Field(
        default_factory=list)
    copy_to_host: list[CopyToHost] = Field(default_factory=list)
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], EnvValue] = Field(
        default_factory=dict)
    timezone: str | None = None
    # Values for {{.Param.KEY}} in provisioning steps (roost/config/params.py).
    param: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = Field(
        default_factory=dict)
    # The host's http_proxy & co. in the guest's environment (env wins), as Lima.
    propagate_proxy_env: bool = True
    ssh: SSH = Field(default_factory=SSH)
    host_resolver: HostResolver = Field(default_factory=HostResolver)
    network: Network = Field(default_factory=Network)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    mount_type: Literal["virtiofs", "9p", "reverse-sshfs"] | None = None
    mounts: list[Mount] = Field(default_factory=list)
    port_forwards: list[PortForward] = Field(default_factory=list)
    provision: list[Provision] = Field(default_factory=list)
    guest_agent: GuestAgent = Field(default_factory=GuestAgent)
    worker: Worker = Field(default_factory=Worker)
    health_checks: list[HealthCheck] = Field(default_factory=list)
    ca_certs: CACerts = Field(default_factory=CACerts)
    additional_disks: list[AdditionalDisk] = Field(default_factory=list)
    # Built-in image: the disk is a read-only lower layer, changes live in a
    # tmpfs upper layer (gone at shutdown) that `roost diff` reports.
    read_only_root: bool = False

    @model_validator(mode="after")
    def _params_defined(self) -> Config:
        from roost.config import params

        missing = [f"provision[{i}] uses {{{{.Param.{key}}}}}" for i, key in
                   params.used(self.provision) if key not in self.param]
        if missing:
            raise ValueError(f"{'; '.join(missing[:5])}, which param does not define (add "
                             "it to param:, or --set param.KEY=VALUE)")
        return self

    @field_validator("additional_disks")
    @classmethod
    def _disks_once(cls, v: list[AdditionalDisk]) -> list[AdditionalDisk]:
        if dupes := _repeated([d.name for d in v]):
            raise ValueError(f"disk {dupes[0]!r} is listed twice")
        return v

    @field_validator("health_checks")
    @classmethod
    def _unique_checks(cls, v: list[HealthCheck]) -> list[HealthCheck]:
        if dupes := _repeated([c.name for c in v]):
            raise ValueError(f"health check names must be unique, repeated: {quote(dupes)}")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int) -> int:
        if v < 128 * 1024**2:
            raise ValueError(f"at least 128MiB is needed, got {format_size(v)}")
        if v % (1024**2):
            raise ValueError(f"must be a whole number of MiB, got {v} bytes")
        return v

    @field_validator("disk")
    @classmethod
    def _disk(cls, v: int) -> int:
        if v < 2 * 1024**3:
            raise ValueError(
                f"at least 2GiB is needed (the base image's size), got {format_size(v)}"
            )
        if v % (1024**2):
            raise ValueError(f"must be a whole number of MiB, got {v} bytes")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v in BUILT_IMAGES:
            return v
        if "\0" in v:
            raise ValueError(f"a path cannot hold a NUL, got {quote(v)}")
        path = os.path.expanduser(v)
        if not os.path.isabs(path):
            raise ValueError(f"must be one of {', '.join(BUILT_IMAGES)} or an absolute path "
                             "to a disk image")
        if not os.path.isfile(path):
            raise ValueError(f"no disk image at {path}")
        return path

    @model_validator(mode="after")
    def _image_capabilities(self) -> Config:
        if self.images and self.image != BUILTIN_IMAGE:
            raise ValueError("give image or images, not both")
        if self.read_only_root and (self.images or self.image != BUILTIN_IMAGE):
            raise ValueError("readOnlyRoot needs the built-in image (its init mounts the "
                             "overlay root); a cloud image boots its own init")
        if self.mount_type is not None and self.mount_type in self.mount_types_unsupported:
            raise ValueError(f"mountType {self.mount_type} is listed in mountTypesUnsupported "
                             "(the image's kernel lacks it); pick another mount type")
        return self

    def cloud_image(self) -> bool:
        """A distribution's own boot (firmware, systemd, cloud-init), not roost's init."""
        return bool(self.images) or self.image != BUILTIN_IMAGE

    @field_validator("mounts")
    @classmethod
    def _unique_mount_points(cls, v: list[Mount]) -> list[Mount]:
        # Paths are normalised, so /mnt/a and /mnt/a/ meet here.
        first: dict[str, int] = {}
        for i, m in enumerate(v):
            point = m.guest_path()
            if point in first:
                raise ValueError(f"mounts[{first[point]}] and mounts[{i}] are both at the guest "
                                 f"path {point}; one share would hide the other")
            first[point] = i
        return v
