"""Instance configuration: `model` (the schema), `loader` (YAML in and out),
`sizes`. Importing the package loads nothing heavy: `roost ls` only needs
`sizes`, and pydantic costs a tenth of a second.
"""
