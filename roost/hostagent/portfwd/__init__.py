"""Port forwarding: Lima's rules (`rules`), the forwarders that carry traffic
through the guest agent's tunnels (`forward`), and the manager that follows
the guest's listening-port events (`manager`)."""
