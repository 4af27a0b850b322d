"""Instance configuration: `model` (the schema), `loader` (YAML in and out),
`sizes`. Importing the package loads nothing heavy: `roost ls` only needs
`sizes`, and pydantic costs a tenth of a second.
"""

# The largest roost.yaml (or template, or --config file) read, checked
# before parsing: far above any real configuration, far below a minute of
# parsing.
MAX_DOCUMENT_BYTES = 1024 * 1024
