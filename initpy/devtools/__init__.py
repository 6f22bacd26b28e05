"""Tools for people, never in an initrd: the `initpy` command (walk, diagram,
params), the fake kernel with its scripted disks and network, and the
generator of docs/states.md.
"""
