"""What a training run writes besides checkpoints: its folder, log.txt, train-vis/ pictures and
TensorBoard scalars."""

import sys
import time
from pathlib import Path

import numpy as np
import yaml

from fom_cli.config import config_name, without_private_keys
from fom_cli.drawing import draw_keypoints
from fom_cli.errors import BadOutput
from fom_cli.media.files import write_bytes_with
from fom_cli.media.images import to_uint8, write_image

CHECKPOINT_NAME = "checkpoint.pth.tar"


def run_folder(options, config):
    if options.out:
        out_dir = Path(options.out)
    elif options.resume and Path(options.resume).exists():  # not for a model name: its folder is the cache
        out_dir = Path(options.resume).parent
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        out_dir = Path("runs") / f"{config_name(config)}-{stamp}"
    if out_dir.exists() and not out_dir.is_dir():
        raise BadOutput(f"--out {out_dir} is a file; give a folder for the run")
    if not options.resume and (out_dir / CHECKPOINT_NAME).exists():
        raise BadOutput(f"{out_dir} already holds a training run; continue it with --resume "
                        f"{out_dir / CHECKPOINT_NAME} or choose another --out")
    return out_dir


def visualisation(batch, generated, kp_size=5, max_rows=6):
    """uint8 grid: one row per sample; columns source (its keypoints), driving (its keypoints), deformed
    source, occlusion map, prediction."""
    import torch.nn.functional as F

    def images(tensor):
        return list(tensor[:max_rows].detach().float().cpu().permute(0, 2, 3, 1).numpy())

    def keypoints(kp):
        return kp["value"][:max_rows].detach().float().cpu().numpy()

    source, driving = images(batch["source"]), images(batch["driving"])
    height, width = source[0].shape[:2]
    radius = max(1.0, kp_size * height / 256)   # kp_size is meant for 256 px frames
    columns = [[draw_keypoints(image, kp, radius) for image, kp in zip(source, keypoints(generated["kp_source"]))],
               [draw_keypoints(image, kp, radius) for image, kp in zip(driving, keypoints(generated["kp_driving"]))]]
    if "deformed" in generated:
        columns.append(images(generated["deformed"]))
    if "occlusion_map" in generated:
        occlusion = F.interpolate(generated["occlusion_map"][:max_rows].detach().float(), size=(height, width),
                                  mode="bilinear", align_corners=False)
        columns.append(images(occlusion.repeat(1, 3, 1, 1)))
    columns.append(images(generated["prediction"]))
    grid = np.concatenate([np.concatenate(column, axis=0) for column in columns], axis=1)
    return to_uint8(grid)


class RunLog:
    """What the first process writes besides checkpoints: log.txt, train-vis/, TensorBoard scalars."""

    def __init__(self, out_dir, config, quiet):
        self.out_dir = Path(out_dir)
        try:
            (self.out_dir / "train-vis").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadOutput(f"cannot create the run folder {self.out_dir}: {error.strerror}") from None
        self.quiet = quiet
        self.kp_size = config.get("visualizer_params", {}).get("kp_size", 5)
        config_text = yaml.safe_dump(without_private_keys(config), sort_keys=False)
        write_bytes_with(self.out_dir / "config.yaml", lambda temporary: Path(temporary).write_text(config_text))
        self.log_file = open(self.out_dir / "log.txt", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter   # optional: needs the tensorboard package
            self.tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def note(self, message):
        """A remark for the user, also kept in log.txt (as a '#' line, apart from the loss lines)."""
        self.log_file.write(f"# {message}\n")
        self.log_file.flush()
        if not self.quiet:
            print(f"fom train: {message}", file=sys.stderr)

    def iteration(self, step, losses):
        if self.tensorboard is not None:
            for name, value in losses.items():
                self.tensorboard.add_scalar(f"loss/{name}", value, step)

    def epoch(self, epoch, mean_losses, learning_rates, batch, generated):
        # The original's line: "00000012) perceptual - 95.12345; equivariance_value - 0.31234; ..."
        losses = "; ".join(f"{name} - {value:.5f}" for name, value in mean_losses.items())
        self.log_file.write(f"{epoch:08d}) {losses}\n")
        self.log_file.flush()
        if self.tensorboard is not None:
            for name, value in mean_losses.items():
                self.tensorboard.add_scalar(f"epoch/{name}", value, epoch)
            for name, value in learning_rates.items():
                self.tensorboard.add_scalar(f"lr/{name}", value, epoch)
            self.tensorboard.flush()
        write_image(self.out_dir / "train-vis" / f"{epoch:08d}-rec.png", visualisation(batch, generated, self.kp_size))

    def close(self):
        self.log_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
