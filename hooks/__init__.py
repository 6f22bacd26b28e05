"""The hooks: one file or folder per feature (its helpers beside it).

This package file only makes the folder importable for the tests and the
type checker as `hooks`; the registry loads each hook itself
(initpy.runtime.hook.discover).
"""
