"""The loop guard: how many boots in a row have failed, kept on /state.

A boot counts as failed from the moment /state is mounted until it reaches
the hand-off: `count_this_boot` adds one as soon as the `state` milestone
is reached, `reset` writes 0 just before the hand-off's exec (and
`restore` puts the count back if that exec fails). So a boot that ends in a
rescue, a kernel panic, a hang or a power cut after /state was mounted is
counted; one that fails before /state is mounted cannot be, since there is
nowhere to keep the count (docs/manual.md says so).

At a rescue the driver asks `decide`: once more than
`initpy.max_failed_boots` boots in a row have failed, a rescue that would
reboot stays in a shell on the console instead, with the history of those
boots read from the reports kept on /state (report.py), so that a broken
image cannot turn a fleet into a reboot storm. It does not stay for good:
after `initpy.guard_retry` (1 h, doubling with each further failed boot
up to 24 h) without input on the console, the host boots again, so that
an image rolled back on the boot server reaches it without a person, and
a LAN attacker who broke four boots in a row cannot keep it in rescue.

Everything read here comes from /state, which the init does not trust
(docs/security.md): the count file and the reports go through
`Kernel.read_file` (no symlinks, no FIFOs, a size limit), a count that does
not parse is a warning and counts from 0, and a reason quoted from an old
report is cut short and kept on one line.
"""

from __future__ import annotations

import json

from initpy.runtime import cmdline, layout
from initpy.runtime.cmdline import BadValue, Parameter
from initpy.runtime.hook import Fact
from initpy.runtime.kernel import Kernel
from initpy.runtime.record import frozen
from initpy.runtime.report import KEEP_REPORTS, STATE_REPORT_DIR, Report, one_line
from initpy.runtime.state_folders import own_folder

COUNT_PATH = f"{layout.STATE_OWN_DIR}/failed_boots"
# A count is a few digits; a report a few tens of kB (its modules list).
COUNT_LIMIT = 32
REPORT_LIMIT = 1 << 20
REASON_CHARACTERS = 300
DEFAULT_MAX_FAILED_BOOTS = 3


def _max_failed_boots(raw: str | None) -> int:
    try:
        value = int(raw or "")
    except ValueError:
        value = -1
    if not 0 <= value <= 1000:
        raise BadValue(f"expected a number of boots from 0 (never stay) to 1000, got {raw!r}")
    return value


MAX_FAILED_BOOTS: Parameter[int] = Parameter(
    "initpy.max_failed_boots",
    _max_failed_boots,
    DEFAULT_MAX_FAILED_BOOTS,
    "failed boots in a row after which a rescue stays in its shell instead of rebooting "
    "(initpy.rescue=reboot, or an idle initpy.rescue_timeout) until initpy.guard_retry; "
    "0: never",
    "initpy.max_failed_boots=5",
)


@frozen
class RetryWaits:
    """initpy.guard_retry: the first wait of a host the guard keeps, and the longest."""

    first: float  # seconds
    longest: float

    def __str__(self) -> str:
        """As the parameter is written: `1h,1d`."""
        return f"{_written(self.first)},{_written(self.longest)}"


def _written(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


DEFAULT_GUARD_RETRY = RetryWaits(3600.0, 86400.0)
GUARD_RETRY_BOUNDS = (10.0, 30 * 86400.0)
# More doublings than this reach any longest wait (2^40 s is 35,000 years).
MAX_DOUBLINGS = 40


def _guard_retry(raw: str | None) -> RetryWaits | None:
    if raw == "off":
        return None
    first_text, comma, longest_text = (raw or "").partition(",")
    first = cmdline.duration(first_text, *GUARD_RETRY_BOUNDS)
    longest = cmdline.duration(longest_text, *GUARD_RETRY_BOUNDS) if comma else None
    if longest is None:
        longest = max(first, DEFAULT_GUARD_RETRY.longest)
    if longest < first:
        raise BadValue(f"the longest wait must not be shorter than the first, got {raw!r}")
    return RetryWaits(first, longest)


GUARD_RETRY: Parameter[RetryWaits | None] = Parameter(
    "initpy.guard_retry",
    _guard_retry,
    DEFAULT_GUARD_RETRY,
    "once the loop guard keeps a host in rescue: FIRST[,LONGEST] without input on the "
    "console before it boots again, doubling with each further failed boot up to LONGEST "
    "(default 24 h; units s, m, h, d); off: stay until someone leaves the shell",
    "initpy.guard_retry=20m,6h",
)
# Failed boots in a row, this one included, once /state is mounted (None:
# not mounted yet, or the count could not be kept): the engine sets it, the
# hand-off resets the count, rescue decides by it.
FAILED_BOOTS: Fact[int | None] = Fact("failed_boots")


def read_count(kernel: Kernel, report: Report) -> int:
    """The count kept on /state: 0 when there is none, or when it does not parse (a warning)."""
    try:
        text = kernel.read_file(COUNT_PATH, COUNT_LIMIT).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        report.warn(f"failed boots: cannot read {COUNT_PATH} ({exc}); counting from 0")
        return 0
    if not text.isdigit() or len(text) > 9:
        report.warn(f"failed boots: {COUNT_PATH} holds {one_line(text[:20])!r}; counting from 0")
        return 0
    return int(text)


def _write(kernel: Kernel, report: Report, count: int) -> None:
    # Never through a symlink, nor into a folder someone else could write.
    own_folder(kernel, layout.STATE_OWN_DIR, report.warn)
    kernel.write_atomic(COUNT_PATH, f"{count}\n".encode(), 0o600)


def count_this_boot(kernel: Kernel, report: Report) -> int | None:
    """Add this boot to the count on /state (it has failed until the hand-off).

    Returns the count, this boot included, or None when it cannot be kept
    (a warning: the guard then cannot act in this boot).
    """
    try:
        own_folder(kernel, layout.STATE_OWN_DIR, report.warn)  # nor read from one
        count = read_count(kernel, report) + 1
        _write(kernel, report, count)
    except OSError as exc:
        report.warn(f"failed boots: cannot keep the count in {COUNT_PATH}: {exc}")
        return None
    report.extra["failed_boots"] = count
    return count


def reset(kernel: Kernel, report: Report) -> None:
    """This boot reaches the hand-off: no failed boot in a row any more."""
    report.extra["failed_boots"] = 0
    try:
        _write(kernel, report, 0)
    except OSError as exc:
        report.warn(f"failed boots: cannot reset {COUNT_PATH}: {exc}")


def restore(kernel: Kernel, report: Report, count: int) -> None:
    """The hand-off's exec failed after `reset`: this boot failed after all."""
    report.extra["failed_boots"] = count
    try:
        _write(kernel, report, count)
    except OSError:
        pass  # the rescue that follows says nothing new about /state


@frozen
class Guard:
    """What the guard decided at a rescue."""

    count: int | None  # failed boots in a row, this one included; None: not kept
    limit: int
    stays: bool  # more than `limit` in a row: the rescue does not reboot at once
    # Seconds without console input before a host that stays boots again;
    # None: it stays until someone leaves the shell (initpy.guard_retry=off).
    retry_after: float | None = None


def decide(count: int | None, limit: int, retry: RetryWaits | None = DEFAULT_GUARD_RETRY) -> Guard:
    """Stay once `limit` boots in a row have failed before this one (0: never).

    The first boot that stays waits `retry`'s first duration, each further
    failed boot in a row twice as long as the one before, up to its longest.
    """
    stays = count is not None and limit > 0 and count > limit
    if not stays or count is None or retry is None:
        return Guard(count, limit, stays)
    doublings = min(count - limit - 1, MAX_DOUBLINGS)
    return Guard(count, limit, stays, min(retry.first * 2**doublings, retry.longest))


def history(kernel: Kernel, report: Report, count: int) -> list[str]:
    """One line per failed boot in a row, newest first: this one, then the kept reports.

    The kept reports are report.json.0.. on /state; once this boot's report
    has been copied there (`report.rotated`), the boot before it is .1.
    A boot that ended without a report (power cut, panic, hang) left none,
    so the lines then show older reports: each says its own outcome.
    """
    lines = [f"this boot: {_short(report.reason or 'no reason given')}"]
    first = 1 if report.rotated else 0
    for ago in range(1, min(count, KEEP_REPORTS)):
        index = first + ago - 1
        if index >= KEEP_REPORTS:
            break
        lines.append(f"{_boots_ago(ago)}: {_kept_reason(kernel, index)}")
    return lines


def _boots_ago(ago: int) -> str:
    return f"{ago} boot ago" if ago == 1 else f"{ago} boots ago"


def _kept_reason(kernel: Kernel, index: int) -> str:
    path = f"{STATE_REPORT_DIR}/report.json.{index}"
    try:
        kept = json.loads(kernel.read_file(path, REPORT_LIMIT))
    except FileNotFoundError:
        return "no report kept (the boot ended before a report: a power cut, a panic or a hang)"
    except (OSError, ValueError) as exc:
        return f"report.json.{index} unreadable: {_short(str(exc))}"
    if not isinstance(kept, dict):
        return f"report.json.{index} is not a report"
    outcome, reason = kept.get("outcome"), kept.get("reason")
    if outcome == "rescue":
        return _short(str(reason) if reason else "rescue, no reason given")
    return f"outcome {_short(str(outcome))}" + (f": {_short(str(reason))}" if reason else "")


def _short(text: str) -> str:
    text = one_line(text)
    return text if len(text) <= REASON_CHARACTERS else text[: REASON_CHARACTERS - 3] + "..."
