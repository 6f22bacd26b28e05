"""The VM test tier: real boots of the real initrd in QEMU (see docs/testing.md)."""
