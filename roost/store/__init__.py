"""Where roost keeps its state: instance directories, keys, caches."""
