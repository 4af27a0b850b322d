"""The host agent: the control plane of one running instance."""
