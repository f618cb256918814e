"""Running the ffmpeg binary that ships with imageio-ffmpeg (no system ffmpeg needed).

ffmpeg runs with SIGXFSZ ignored, as Python itself runs: under a file size limit (`ulimit -f`) a write
then fails with "File too large", which ffmpeg reports and we can pass on, where the signal's default
would kill it without a word. Its stderr is always captured, so an error can name ffmpeg's reason.
"""

import collections
import errno
import os
import re
import signal
import subprocess
import threading

import imageio_ffmpeg

# ffmpeg's last lines of complaint are the ones that name the cause; a flood of repeated ones is dropped.
STDERR_LINES_KEPT = 50

# The OS errors that mean "the output could not be written": out of room (a full disk, a quota, a file
# size limit) or a read-only disk. Reading never fails so, whichever line of ffmpeg's says them.
WRITE_ONLY_ERRORS = [errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS]
# These mean a failed write too when ffmpeg says them of its output, but a failed read of an input also
# gives them, so they count only on lines that are not about an input.
READ_OR_WRITE_ERRORS = [errno.EIO, errno.EACCES, errno.EPERM]


def ffmpeg_command(arguments) -> list:
    return [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin"] + list(arguments)


def run_ffmpeg(arguments) -> subprocess.CompletedProcess:
    """Run imageio-ffmpeg's ffmpeg with its console output captured (text), never shown."""
    return subprocess.run(ffmpeg_command(arguments), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", restore_signals=False)  # keeps SIGXFSZ ignored: see above


class FfmpegFeed:
    """ffmpeg reading its input (raw frames) from a pipe we write, its stderr collected on the side.

    A thread reads ffmpeg's stderr as it comes, so ffmpeg never blocks on a full pipe and its last lines
    are at hand when it fails. `finish()` waits for it and returns its exit status and those lines.
    """

    def __init__(self, arguments):
        self._command = ffmpeg_command(arguments)
        self._process = subprocess.Popen(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            restore_signals=False,  # keeps SIGXFSZ ignored: see the module's docstring
            # Out of the terminal's process group: Ctrl-C reaches fom alone, which then stops ffmpeg.
            start_new_session=True)
        self._stderr_tail = collections.deque(maxlen=STDERR_LINES_KEPT)
        self._stderr_reader = threading.Thread(target=self._collect_stderr, name="fom-ffmpeg-stderr", daemon=True)
        self._stderr_reader.start()

    def _collect_stderr(self):
        for line in self._process.stderr:
            self._stderr_tail.append(line.decode(errors="replace"))
        self._process.stderr.close()

    def write(self, data):
        """Hand ffmpeg more input; OSError (a broken pipe) when it has quit, its exit status says why."""
        self._process.stdin.write(data)

    def finish(self) -> subprocess.CompletedProcess:
        """Close ffmpeg's input and wait for it to finish the file: its exit status and last stderr."""
        try:
            self._process.stdin.close()
        except OSError:
            pass  # it quit before reading everything; its exit status and stderr say why
        returncode = self._process.wait()
        self._stderr_reader.join()
        return subprocess.CompletedProcess(self._command, returncode, "", "".join(self._stderr_tail))

    def kill(self):
        """Stop ffmpeg at once, for an output that is thrown away."""
        self._process.kill()
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait()
        self._stderr_reader.join()


def last_ffmpeg_message(stderr) -> str:
    """ffmpeg's last complaint, without its "[component @ 0x...]" prefix, for a one-line error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("At least one output file")]
    if not lines:
        return "ffmpeg gave no reason"
    return re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", lines[-1])


def write_failure(result: subprocess.CompletedProcess, inputs=()):
    """The OS's reason when a failed ffmpeg could not write its output ("No space left on device", "File
    too large", ...), or None when it failed for another reason (a broken input, a codec it lacks).
    `inputs`: paths ffmpeg read, so that an error it reports of one of them is not taken for a write's."""
    if hasattr(signal, "SIGXFSZ") and result.returncode == -signal.SIGXFSZ:  # a file size limit, all the same
        return os.strerror(errno.EFBIG)
    for line in reversed(result.stderr.splitlines()):
        for code in WRITE_ONLY_ERRORS + READ_OR_WRITE_ERRORS:
            reason = os.strerror(code)
            if reason not in line:
                continue
            if code in READ_OR_WRITE_ERRORS and _is_about_an_input(line.replace(reason, ""), inputs):
                continue
            return reason
    return None


def _is_about_an_input(line, inputs) -> bool:
    # ffmpeg tags what its demuxers say "[in#1/mov @ 0x...]", and names the input in other lines.
    return "in#" in line or "input" in line.lower() or any(os.fspath(path) in line for path in inputs)


def ffmpeg_failure(result: subprocess.CompletedProcess) -> str:
    """Why ffmpeg failed, in a few words: the OS's reason for a failed write, else its last complaint."""
    reason = write_failure(result)
    if reason is not None:
        return reason
    if result.returncode < 0:
        try:
            return f"ffmpeg was stopped by {signal.Signals(-result.returncode).name}"
        except ValueError:
            return f"ffmpeg was stopped by signal {-result.returncode}"
    return last_ffmpeg_message(result.stderr)


def count_video_packets(path):
    """(the number of packets of the first video stream of `path`, or None when ffmpeg cannot read it;
    whether the file ends before its index does).

    Stream copy reads the container without decoding a single picture (for 120 frames of 256x256 H.264
    about 25 ms, nearly all of it ffmpeg starting; decoding takes ten times as long); the framecrc muxer
    writes one line per packet (and "#" header lines). Its count does not depend on ffmpeg's progress
    report, which ffmpeg 7.0 gives without a frame count when copying. A file cut short holds only the
    packets written before the cut."""
    result = run_ffmpeg(["-v", "error", "-i", os.fspath(path), "-map", "0:V:0", "-c", "copy", "-f", "framecrc", "-"])
    cut_off = "partial file" in result.stderr  # the demuxer's word for packets its index lists past the end
    if result.returncode != 0:
        return None, cut_off
    return sum(1 for line in result.stdout.splitlines() if line.strip() and not line.startswith("#")), cut_off


def count_video_frames(path) -> int:
    """How many frames the first video stream of `path` holds; 0 when ffmpeg cannot read it at all."""
    return count_video_packets(path)[0] or 0
