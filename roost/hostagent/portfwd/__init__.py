"""Port forwarding: Lima's rules (`rules`), the forwarders that carry traffic
through the guest agent's tunnels (`forward`), the manager that follows
the guest's listening-port events (`manager`), and the instance's forwarding
as a whole, with the SSH fallback (`orchestrator`)."""
