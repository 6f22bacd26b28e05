"""The VM harness: QEMU under this machine's rules, the guest program, disks, namespaces, sinks.

Shared by the VM tests (tests/vm), the benchmarks (benchmarks/) and
scripts/demo; nothing here is a test. docs/testing.md describes each module.
"""
