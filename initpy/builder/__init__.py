"""What builds the initrd on a build machine: mkinitrd, the freeze, ELF
libraries, kernel modules and the cpio writer. It reads the hooks through
the runtime's registry and writes the runtime's manifest (initpy.runtime.
layout), but never imports the PID 1 driver; it is never frozen.
"""
