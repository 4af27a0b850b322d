"""roost's operations as typed functions, under the CLI and the SDK.

Each module is one concept: instances (create, stop, delete, clone,
suspend...), start (to Running, or why not), listing (what `ls` and `info`
show), snapshots, mounts, copy, guest (what the guest agent answers), and
hostapi (the host agent's socket). They return typed results and raise the
typed errors of roost.errors; none prints, none imports click. As in Lima,
where cmd/limactl parses and prints and pkg/instance does.

Nothing is imported here: `roost ls` loads only what it uses.
"""
