"""Videos out: encode frames to a video, a GIF or a folder of PNGs, with the driving video's sound.

Encoding runs in a background thread behind a small bounded queue, so memory does not grow with the
length of a video. The output appears at its path only when complete (`files.AtomicOutput`): after
ffmpeg exited 0, for the encoding and for adding the sound, and the file was seen to hold every frame.
A write that fails on the way (a full disk, a file size limit, no permission) is one BadOutput naming
the OS's reason, and whatever was at the path before stays as it was.
"""

import math
import os
import queue
import re
import sys
import threading
from fractions import Fraction

import numpy as np

from fom_cli.errors import BadInput, BadOutput, FomError, first_line
from fom_cli.media.ffmpeg import (FfmpegFeed, count_video_frames, ffmpeg_failure, last_ffmpeg_message, run_ffmpeg,
                                  write_failure)
from fom_cli.media.files import (AtomicOutput, could_not_write, make_directories, os_error_line,
                                 remove_directories, remove_path, temporary_path_beside)
from fom_cli.media.images import to_uint8, write_encoded_image
from fom_cli.media.video_in import QUEUE_SIZE, STOP_TIMEOUT, probe

# Output containers that can carry a sound track, and the audio codec each one gets.
AUDIO_CODEC_FOR_CONTAINER = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus"}

# ffmpeg picks a muxer from the file name, but our temporary files end in ".tmp-<random>", so we name it.
FFMPEG_MUXER_FOR_EXTENSION = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".gif": "gif"}
VIDEO_OUTPUT_EXTENSIONS = tuple(FFMPEG_MUXER_FOR_EXTENSION)

# The names fom gives PNG frames; a frames folder holding anything else is not fom's to replace.
FRAME_NAME = re.compile(r"\d{6}\.png")

_FINISH = object()  # queue marker: no more frames, finish the file
_ABORT = object()  # queue marker: stop now, the output will be thrown away


class _EncodingAborted(BaseException):
    """Raised in the encoder thread to abandon a video: ffmpeg is killed, not waited for. A BaseException,
    so no `except Exception` on the way mistakes it for an encoding error."""


def check_frame_count(encoded, frames_written, shown_as):
    """BadOutput unless the video file `encoded` holds `frames_written` frames, counted by ffmpeg: the
    last guard against a file cut short by a failure ffmpeg did not report. `shown_as` is the path the
    error names, the output's rather than its hidden temporary's."""
    frames_found = count_video_frames(encoded)
    if frames_found != frames_written:
        raise BadOutput(f"the video written to {shown_as} holds {frames_found} of the {frames_written} frames "
                        f"encoded; check the free disk space and try again")


def is_frames_folder(path) -> bool:
    """A path ending in a slash, an existing folder or a name without extension means PNG frames."""
    path = os.fspath(path)
    return (path.endswith(("/", os.sep)) or os.path.isdir(path)
            or not os.path.splitext(os.path.normpath(path))[1])


def check_video_output(path, overwrite=False):
    """BadOutput unless `path` can be an output: a known kind, not the wrong kind of thing already, and
    for a frames folder empty or, with `overwrite`, holding only frames an earlier run of fom wrote.
    Cheap and side-effect free, so commands call it for every output before any slow work."""
    path = os.fspath(path)
    if is_frames_folder(path):
        if os.path.isfile(path):
            raise BadOutput(f"{path} is a file; give a directory path for PNG frames or a video file name")
        if os.path.isdir(path):
            names = [name for name in os.listdir(path) if not name.startswith(".")]
            others = [name for name in names if not FRAME_NAME.fullmatch(name)]
            if others:
                raise BadOutput(f"the frames folder {path} holds files fom did not write ({others[0]}); "
                                f"choose an empty or new folder")
            if names and not overwrite:
                raise BadOutput(f"the frames folder {path} already holds frames; pass --overwrite to replace "
                                f"them or choose another folder")
        return
    extension = os.path.splitext(path)[1].lower()
    if extension not in FFMPEG_MUXER_FOR_EXTENSION:
        raise BadOutput(f"cannot write '{extension}' files ({path}); use .mp4, .mov, .mkv, .webm, .gif or a "
                        f"directory for PNG frames")
    if os.path.isdir(path):
        raise BadOutput(f"{path} is a directory; give a video file name")


class VideoWriter:
    """Write frames to a video, a GIF or a directory of PNGs; the output appears only when complete.

    The kind of output follows the path: .mp4/.mov/.mkv are H.264, .webm is VP9, .gif an animated GIF,
    and a path ending in a slash, an existing directory or a name without extension gets lossless PNGs
    000000.png, 000001.png, ... Use it as a context manager:

        with VideoWriter("out.mp4", fps=reader.fps, audio_from=reader.path) as writer:
            for frame in frames:
                writer.write(frame)

    On a clean exit the video is finished, the sound of `audio_from` (from `audio_start` seconds on,
    cut to the video's length) is added where the container can carry it, the frames in the file are
    counted, and the file is moved onto `path`. On an exception nothing is left behind. A failed write,
    while encoding or adding the sound, is a BadOutput naming the cause; a sound that cannot be added
    for a reason of its own (a broken audio stream) leaves the video silent, with a warning. `quality`
    is None for the encoder's defaults or 1-10 (10 best), as in imageio; it applies to H.264 and VP9. A
    frames folder replaces an earlier run's frames only with `overwrite`, and never a folder holding
    other files.
    """

    def __init__(self, path, fps, audio_from=None, audio_start=0.0, quality=None, overwrite=False, mark=None,
                 credentials=None):
        self.path = os.fspath(path)
        self.mark = mark   # a marks.SyntheticMedia: what the file says about itself
        self.credentials = credentials   # a credentials.ContentCredentials: signs the file (or each PNG frame)
        self.frames_written = 0
        if not math.isfinite(float(fps)) or fps <= 0:
            raise FomError(f"the frame rate must be a positive number, not {fps}")
        self.fps = float(fps)
        if quality is not None and not 1 <= quality <= 10:
            raise FomError(f"video quality must be between 1 and 10, not {quality}")
        self.quality = quality
        if audio_start < 0:
            raise FomError(f"the audio start must be 0 seconds or later, not {audio_start}")
        self.audio_start = float(audio_start)

        check_video_output(self.path, overwrite)
        self._is_directory = is_frames_folder(self.path)
        self._extension = "" if self._is_directory else os.path.splitext(self.path)[1].lower()
        # Ask about the sound now, early: a bad audio file should stop the run before hours of animating.
        self._audio_source = None
        if audio_from is not None and self._extension in AUDIO_CODEC_FOR_CONTAINER:
            audio_info = probe(audio_from)
            if audio_info.has_audio:
                self._audio_source = audio_info
        output_directory = os.path.dirname(os.path.normpath(self.path)) or "."
        self._created_directories = make_directories(output_directory)

        self._output = None  # the AtomicOutput, made with the first frame
        self._frame_size = None  # (height, width) of the first frame; all frames must match it
        self._frames = queue.Queue(maxsize=QUEUE_SIZE)
        self._encoder = None
        self._encoder_error = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None:
            self._abandon()
            return False
        try:
            self._finish()
        except BaseException:
            self._abandon()
            raise
        return False

    # -- frames -----------------------------------------------------------------------------------

    def write(self, frame):
        """Queue one frame (uint8 HxWx3 RGB, or float in [0, 1]) for the background encoder."""
        frame = self._as_uint8_frame(frame)
        if self._frame_size is None:
            self._frame_size = frame.shape[:2]
            self._start_encoder()
        elif frame.shape[:2] != self._frame_size:
            raise ValueError(f"frame {self.frames_written} is {frame.shape[1]}x{frame.shape[0]}, but the "
                             f"first was {self._frame_size[1]}x{self._frame_size[0]}")
        self._hand_to_encoder(frame)
        self.frames_written += 1

    @staticmethod
    def _as_uint8_frame(frame) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"a frame must be an HxWx3 RGB array, not shape {frame.shape}")
        if frame.dtype == np.uint8:
            return frame.copy()  # the caller may reuse its buffer while we are still encoding
        return to_uint8(frame)

    def _hand_to_encoder(self, item):
        while True:
            if self._encoder_error is not None:
                raise self._encoder_error
            try:
                self._frames.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self._encoder.is_alive():  # it stopped early; do not wait for room forever
                    raise self._encoder_error or BadOutput(f"the encoder for {self.path} stopped "
                                                           f"unexpectedly; try again")

    # -- background encoding ----------------------------------------------------------------------

    def _start_encoder(self):
        self._output = AtomicOutput(self.path, directory=self._is_directory)
        work = self._encode_png_frames if self._is_directory else self._encode_with_ffmpeg
        self._encoder = threading.Thread(target=self._run_encoder, args=(work,), name="fom-encoder",
                                         daemon=True)
        self._encoder.start()

    def _run_encoder(self, work):
        try:
            work()
        except _EncodingAborted:
            pass
        except FomError as error:
            self._encoder_error = error
        except OSError as error:
            self._encoder_error = could_not_write(self.path, os_error_line(error))
        except Exception as error:
            self._encoder_error = could_not_write(self.path, first_line(error))

    def _next_frame(self):
        item = self._frames.get()
        if item is _ABORT:
            raise _EncodingAborted()
        return item

    def _encode_png_frames(self):
        index = 0
        while (frame := self._next_frame()) is not _FINISH:
            path = os.path.join(self._output.temporary, f"{index:06d}.png")
            write_encoded_image(path, frame, mark=None if self.mark is None else self.mark.png)
            if self.credentials is not None:
                self.credentials.sign(path)
            index += 1

    def _encode_with_ffmpeg(self):
        codec, pixel_format, options = self._encoder_settings()
        pad_to_even = pixel_format == "yuv420p"  # 4:2:0 chroma needs even width and height
        height, width = self._frame_size
        if pad_to_even:
            height, width = height + height % 2, width + width % 2
        ffmpeg = FfmpegFeed(["-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                             "-r", str(self._exact_fps()), "-i", "-", "-an",
                             "-c:v", codec, "-pix_fmt", pixel_format, *options, *self._metadata_arguments(),
                             "-v", "error",  # quiet on success, still says why on failure
                             "-f", FFMPEG_MUXER_FOR_EXTENSION[self._extension], self._output.temporary])
        try:
            while (frame := self._next_frame()) is not _FINISH:
                if pad_to_even:
                    # Repeat the last row/column rather than add black, so no line shows at the edge.
                    frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
                try:
                    ffmpeg.write(np.ascontiguousarray(frame))
                except OSError:  # the pipe broke: ffmpeg has quit; its exit status and stderr say why
                    break
        except BaseException:
            ffmpeg.kill()  # do not wait for ffmpeg to finish a file that is thrown away
            raise
        result = ffmpeg.finish()
        if result.returncode != 0:
            raise self._ffmpeg_error(result, "encode")
        if self._extension == ".gif" and self.mark is not None:
            # ffmpeg's GIF muxer writes no comments: the mark goes in after the fact.
            with open(self._output.temporary, "rb") as file:
                marked = self.mark.gif(file.read())
            with open(self._output.temporary, "wb") as file:
                file.write(marked)

    def _metadata_arguments(self):
        """ffmpeg's options for the mark as container tags (not for GIF, which takes none)."""
        if self.mark is None or self._extension == ".gif":
            return []
        return self.mark.ffmpeg_arguments()

    def _ffmpeg_error(self, result, step) -> BadOutput:
        """The one-line error for a failed ffmpeg run: the OS's reason for a failed write, else ffmpeg's."""
        reason = write_failure(result)
        if reason is not None:
            return could_not_write(self.path, reason)
        return BadOutput(f"ffmpeg could not {step} {self.path} ({ffmpeg_failure(result)}); check the free disk "
                         f"space and permissions")

    def _encoder_settings(self):
        """(codec, pixel format, extra ffmpeg output options) for this output."""
        # Convert with the BT.709 matrix and tag the video as BT.709. Browsers and players assume BT.709
        # for untagged video, so ffmpeg's default (BT.601, untagged) would shift the colours slightly.
        bt709 = ["-vf", "scale=out_color_matrix=bt709:out_range=tv,"
                        "setparams=range=tv:colorspace=bt709:color_primaries=bt709:color_trc=bt709"]
        if self._extension in (".mp4", ".mov", ".mkv"):
            # faststart puts the index first, so a browser can start playing before the download ends.
            # use_metadata_tags keeps tags of any name (the mark's) in MP4 and MOV.
            faststart = ["-movflags", "+faststart+use_metadata_tags"] if self._extension in (".mp4", ".mov") else []
            # imageio's scale for quality: 10 is crf 0 (lossless), 1 is crf 45; None keeps x264's 23.
            crf = [] if self.quality is None else ["-crf", str(int((1 - self.quality / 10) * 51))]
            return "libx264", "yuv420p", crf + bt709 + faststart
        if self._extension == ".webm":
            # libvpx-vp9 needs an explicit constant quality (crf with b:v 0); its default bitrate is
            # low. cpu-used 4 and row-mt make it several times faster at a small cost in size.
            crf = round((1 - (self.quality or 5) / 10) * 63)
            return "libvpx-vp9", "yuv420p", bt709 + ["-crf", str(crf), "-b:v", "0", "-cpu-used", "4", "-row-mt", "1"]
        # GIF: each frame gets a palette of its own colours and is dithered onto it; looks far better than
        # the default fixed palette. One palette for the whole video would make ffmpeg hold every frame
        # until the last has been seen (memory growing with the length); per frame, it holds one.
        palette = ["-vf", "split[frames][copy];[copy]palettegen=stats_mode=single[palette];"
                          "[frames][palette]paletteuse=new=1"]
        return "gif", "pal8", palette

    def _exact_fps(self) -> Fraction:
        # As a fraction, so 29.97002997 (30000/1001) and 12.5 reach ffmpeg exactly.
        return Fraction(self.fps).limit_denominator(1001)

    # -- finishing --------------------------------------------------------------------------------

    def _finish(self):
        if self.frames_written == 0:
            raise BadInput(f"no frames were written to {self.path}; check that the input has frames "
                           f"in the chosen range")
        self._hand_to_encoder(_FINISH)
        self._encoder.join()
        if self._encoder_error is not None:
            raise self._encoder_error
        if not self._is_directory:
            check_frame_count(self._output.temporary, self.frames_written, self.path)
            if self._audio_source is not None:
                self._add_audio()
            if self.credentials is not None:   # last: any later change to the file would break the signature
                self.credentials.sign(self._output.temporary, title=os.path.basename(self.path))
            self._output.commit()
        else:
            self._commit_frames_folder()
        self._created_directories = []  # they hold the output now

    def _add_audio(self):
        """Mux the sound in, copying the video stream, and put the result where the silent video was. A
        failed write (a full disk) is a BadOutput; if the sound itself cannot be added (ffmpeg cannot
        decode or encode it), the silent video stays, with a warning."""
        with_audio = temporary_path_beside(self.path)
        duration = self.frames_written / self.fps
        arguments = ["-v", "error", "-y",
                     "-i", self._output.temporary,
                     "-ss", f"{self.audio_start:.6f}", "-i", self._audio_source.path,
                     "-map", "0:v:0", "-map", "1:a:0",
                     "-c:v", "copy", "-c:a", AUDIO_CODEC_FOR_CONTAINER[self._extension],
                     "-t", f"{duration:.6f}"]
        if self._extension in (".mp4", ".mov"):
            arguments += ["-movflags", "+faststart+use_metadata_tags"]
        arguments += self._metadata_arguments()
        arguments += ["-f", FFMPEG_MUXER_FOR_EXTENSION[self._extension], with_audio]
        try:
            result = run_ffmpeg(arguments)
            if result.returncode != 0:
                if write_failure(result, inputs=[self._audio_source.path]) is not None:
                    raise self._ffmpeg_error(result, "add the sound to")
                # The pictures, maybe hours of work, are fine: keep them, silent, and say so.
                print(f"fom: warning: could not add the sound of {self._audio_source.path} to {self.path} "
                      f"({last_ffmpeg_message(result.stderr)}); the video is written without sound",
                      file=sys.stderr)
                return
            check_frame_count(with_audio, self.frames_written, self.path)
            os.replace(with_audio, self._output.temporary)
        finally:
            remove_path(with_audio)

    def _commit_frames_folder(self):
        """Rename the finished folder into place. An earlier run's frames (check_video_output allowed
        them with overwrite) go to a hidden name first and are removed only once the new ones are in."""
        if not (os.path.isdir(self.path) and os.listdir(self.path)):
            self._output.commit()
            return
        aside = temporary_path_beside(self.path)
        os.rename(self.path, aside)
        try:
            self._output.commit()
        except BaseException:
            os.rename(aside, self.path)
            raise
        remove_path(aside)

    def _abandon(self):
        """Stop the encoder and delete every trace of the output, leaving any error to the caller."""
        if self._encoder is not None and self._encoder.is_alive():
            # Empty the queue so the marker fits, then wait for the encoder to notice it.
            try:
                while True:
                    self._frames.get_nowait()
            except queue.Empty:
                pass
            self._frames.put(_ABORT)
            # An encoder stuck in a hung ffmpeg must not hang Ctrl-C: stop waiting after a while (a daemon
            # thread, gone with the process) and remove the output all the same.
            self._encoder.join(timeout=STOP_TIMEOUT)
        if self._output is not None:
            self._output.discard()
        remove_directories(self._created_directories)
