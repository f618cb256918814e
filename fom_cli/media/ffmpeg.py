"""Running the ffmpeg binary that ships with imageio-ffmpeg (no system ffmpeg needed)."""

import re
import subprocess

import imageio_ffmpeg


def run_ffmpeg(arguments) -> subprocess.CompletedProcess:
    """Run imageio-ffmpeg's ffmpeg with its console output captured (text), never shown."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin"] + list(arguments)
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")


def last_ffmpeg_message(stderr) -> str:
    """ffmpeg's last complaint, without its "[component @ 0x...]" prefix, for a one-line error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("At least one output file")]
    if not lines:
        return "ffmpeg gave no reason"
    return re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", lines[-1])
