"""Re-create the sample media shipped in this folder: `python -m fom_cli.samples.make_samples`.

The samples are `fom synth` cartoon faces drawn from a stream of their own (SAMPLE_SEED), so none of
them is a face or a motion the bundled model trained on or is evaluated on:

  toon-1.png, toon-2.png  256x256 source faces, looking straight ahead
  toon-wide.png           a 320x240 source (not square: `fom animate` centre-crops it, see --fit)
  drive-talk.mp4          4 s at 25 fps of another face talking, with a sound track that follows its mouth
  drive-move.mp4          4 s at 25 fps of a face turning, swaying and blinking, silent

The PNGs come out the same byte for byte; the videos depend on the ffmpeg build's H.264 encoder.
"""

import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from fom_cli.media.images import write_image
from fom_cli.media.video_out import VideoWriter
from fom_cli.training.synth import Motion, render_frame, render_video, sample_identity, sample_motion

SAMPLE_SEED = 7_000_007
FPS = 25
AUDIO_RATE = 16_000
HERE = Path(__file__).resolve().parent


def _rng(*key):
    return np.random.default_rng([SAMPLE_SEED, *key])


def still_motion():
    """One frame: head centred and upright, eyes open, mouth closed, looking ahead."""
    return Motion(translation=np.zeros((1, 2)), rotation=np.zeros(1), scale=np.ones(1), blink=np.zeros(1),
                  mouth=np.zeros(1), gaze=np.zeros((1, 2)))


def source_image(index, size):
    return render_frame(sample_identity(_rng(1, index)), still_motion(), 0, size)


def talking_motion(num_frames):
    """A performance that talks a lot: the mouth of sample_motion, kept open more of the time."""
    motion = sample_motion(_rng(2, 0), num_frames)
    motion.mouth = np.clip(motion.mouth * 1.3 + 0.05, 0.0, 1.0)
    return motion


def moving_motion(num_frames):
    """A performance with large head movement and a closed mouth, so the motion is easy to see."""
    motion = sample_motion(_rng(2, 1), num_frames)
    frames = np.arange(num_frames) / num_frames
    motion.rotation = 0.3 * np.sin(2 * np.pi * frames)                # turn right, then left
    motion.translation = motion.translation + np.stack([0.12 * np.sin(2 * np.pi * frames),
                                                        0.05 * np.sin(4 * np.pi * frames)], axis=1)
    motion.mouth = np.zeros(num_frames)
    return motion


def voice(mouth, fps=FPS, rate=AUDIO_RATE):
    """A buzzing vowel whose loudness follows the mouth opening: int16 mono samples."""
    num_samples = int(len(mouth) / fps * rate)
    t = np.arange(num_samples) / rate
    pitch = 130 + 25 * np.sin(2 * np.pi * 0.7 * t)                    # a speaking voice's slow glide
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    buzz = sum(np.sin(k * phase) / k for k in range(1, 9))
    loudness = np.interp(t, np.arange(len(mouth)) / fps, mouth)
    return (0.25 * 32767 * loudness * buzz / np.abs(buzz).max()).astype(np.int16)


def write_wav(path, samples, rate=AUDIO_RATE):
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(samples.tobytes())


def write_video(path, frames, audio=None):
    """H.264 at 25 fps; with `audio`, muxed with its sound as AAC (the video stream is copied)."""
    with tempfile.TemporaryDirectory() as scratch:
        silent = Path(scratch) / "silent.mp4" if audio is not None else path
        with VideoWriter(silent, fps=FPS, quality=8) as writer:
            for frame in frames:
                writer.write(frame)
        if audio is not None:
            sound = Path(scratch) / "voice.wav"
            write_wav(sound, audio)
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(silent), "-i", str(sound),
                            "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest",
                            "-movflags", "+faststart", str(path)], check=True)


def main(out_dir=HERE):
    out_dir = Path(out_dir)
    write_image(out_dir / "toon-1.png", source_image(0, 256))
    write_image(out_dir / "toon-2.png", source_image(1, 256))
    write_image(out_dir / "toon-wide.png", source_image(2, 320)[40:280])    # 320 wide, 240 high
    num_frames = 4 * FPS
    talking = talking_motion(num_frames)
    write_video(out_dir / "drive-talk.mp4", render_video(sample_identity(_rng(3, 0)), talking, 256),
                audio=voice(talking.mouth))
    write_video(out_dir / "drive-move.mp4", render_video(sample_identity(_rng(3, 1)), moving_motion(num_frames), 256))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
