"""SSH keys, the per-instance ssh.config, and running commands over SSH."""
