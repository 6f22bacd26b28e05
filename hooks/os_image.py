"""The OS image: the --rootfs tree's /usr, mounted from the initrd's squashfs.

Owns the `mount_os` state, right after load_modules. mkinitrd packs the
tree's /usr (with the kernel's module tree and the hooks' files) into a
compressed read-only image, layout.OS_IMAGE, an archive of its own in the
initrd (initpy.builder.os_image), and chooses this hook with it: never
without an image, so the minimal initrd carries none of its modules.

At boot the image is attached to a loop device and mounted (squashfs,
read-only) at layout.OS_MOUNTED; /usr then becomes an overlay whose lower
layers are the image's /usr, on top, and the initramfs's own /usr below it
(initpy's files, the busybox applets the tree lacks), with a tmpfs upper
layer for what the OS writes to /usr. mkinitrd leaves out of the image
what the init's files replace, so /usr shows exactly what the merged
initrd held before (docs/os.md, "The OS image"). The OS's files are then
read from the compressed image when used, and their page cache can be
reclaimed: only the compressed image stays in RAM.

Everything after load_modules may use the OS (hooks exec its programs and
write its /etc): the state runs before any of them. A missing or broken
image is a rescue naming the problem and the fix; a module the kernel
refuses is load_modules' rescue, as for every module a hook names.
"""

from __future__ import annotations

from initpy.runtime import layout
from initpy.runtime.hook import BootContext, BootFailure, Hook, Milestone, State
from initpy.runtime.kernel import MS_NODEV, MS_NOSUID, MS_RDONLY

MOUNT_OS = "mount_os"
OS_USR = f"{layout.OS_MOUNTED}{layout.OS_OVERLAID}"
UPPER = f"{layout.OS_WRITES}/upper"
WORK = f"{layout.OS_WRITES}/work"
REBUILD = "build the initrd again with mkinitrd --rootfs TREE"


def mount_os(ctx: BootContext) -> str:
    """Mount the OS image and lay /usr over it; BootFailure names what is wrong."""
    k = ctx.kernel
    if not k.exists(layout.OS_IMAGE):
        raise BootFailure(
            f"the OS image {layout.OS_IMAGE} is not in the initrd",
            f"{REBUILD} (it packs the image and chooses hook {layout.OS_IMAGE_HOOK} with it), "
            "and check that the whole initrd was served",
        )
    try:
        device = k.attach_loop(layout.OS_IMAGE)
    except OSError as exc:
        raise BootFailure(
            f"cannot attach the OS image {layout.OS_IMAGE} to a loop device: {exc}",
            "the kernel needs the loop driver (CONFIG_BLK_DEV_LOOP; load_modules loads loop "
            "for this hook)",
        ) from exc
    k.mkdir(layout.OS_MOUNTED)
    try:
        k.mount(device, layout.OS_MOUNTED, "squashfs", MS_RDONLY)
    except OSError as exc:
        raise BootFailure(
            f"the OS image {layout.OS_IMAGE} does not mount (squashfs on {device}): {exc}",
            f"{REBUILD}: the image is broken or was cut short; the kernel needs squashfs "
            "with the image's compressor (CONFIG_SQUASHFS_ZSTD or _XZ)",
        ) from exc
    if not k.is_dir(OS_USR):
        raise BootFailure(
            f"the OS image {layout.OS_IMAGE} holds no {layout.OS_OVERLAID}",
            f"{REBUILD}: mkinitrd puts the tree's {layout.OS_OVERLAID} into the image",
        )
    k.mkdir(layout.OS_WRITES)
    try:
        k.mount("tmpfs", layout.OS_WRITES, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    except OSError as exc:
        raise BootFailure(
            f"cannot mount a tmpfs on {layout.OS_WRITES}: {exc}",
            "the kernel needs tmpfs (CONFIG_TMPFS)",
        ) from exc
    k.mkdir(UPPER)
    k.mkdir(WORK)
    # The overlay's /usr has the upper folder's times: made now, /usr would
    # look newer than /etc/.updated, and ConditionNeedsUpdate= would run
    # ldconfig, the hwdb and catalog rebuilds at every boot (docs/os.md, 9).
    k.set_mtime(UPPER, k.stat(OS_USR).st_mtime)
    # The image on top: the OS's own files; the initramfs below: initpy's.
    options = f"lowerdir={OS_USR}:{layout.OS_OVERLAID},upperdir={UPPER},workdir={WORK}"
    try:
        k.mount("overlay", layout.OS_OVERLAID, "overlay", 0, options)
    except OSError as exc:
        raise BootFailure(
            f"cannot lay the OS image over {layout.OS_OVERLAID} (overlay {options}): {exc}",
            "the kernel needs overlayfs (CONFIG_OVERLAY_FS; load_modules loads overlay for "
            "this hook)",
        ) from exc
    size = k.stat(layout.OS_IMAGE).st_size
    return f"{layout.OS_IMAGE} ({size / 1e6:.1f} MB) on {device}, overlaid on {layout.OS_OVERLAID}"


HOOK = Hook(
    name=layout.OS_IMAGE_HOOK,
    description="the OS's /usr from the initrd's compressed image (squashfs, overlay)",
    states=(
        State(
            MOUNT_OS,
            mount_os,
            "mount the OS image and lay /usr over it",
            provides=(Milestone.OS,),
            needs=(Milestone.MODULES,),
        ),
    ),
    modules=("loop", "squashfs", "overlay"),
)
