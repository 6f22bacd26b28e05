"""initpy: a modular initramfs init, written as an explicit state machine."""
