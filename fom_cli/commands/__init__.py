"""One module per sub-command of `fom`: its parser (`configure_parser`) and its `run(args)`.

Below: what `fom animate`, `fom batch` and `fom bench` share, the step from their argparse namespace to
the engine's objects (nothing below commands/ reads a namespace).
"""

import logging

log = logging.getLogger("fom_cli")

# Imports of torch-using modules sit inside the functions: importing any command (for its parser, or for
# `fom models`) must not import torch.


def animation_options(args, **overrides):
    """AnimationOptions from `fom animate`'s options (add_animation_options) in `args`; BadInput for a
    combination that cannot work, before any model loads."""
    from fom_cli.engine import AnimationOptions

    values = {name: getattr(args, name) for name in AnimationOptions.names() if hasattr(args, name)}
    values["audio"] = not getattr(args, "no_audio", False)
    values["mark"] = not getattr(args, "no_mark", False)
    if getattr(args, "sign", None):
        from fom_cli.media.credentials import import_c2pa

        import_c2pa()   # a missing extra stops here, in one line
        values["sign"] = tuple(args.sign)
    if not values["mark"] and not getattr(args, "unmarked_note_said", False):
        log.warning("--no-mark: the output carries no label saying that it is synthetic media")
        args.unmarked_note_said = True
    if values.get("max_size") is None:
        values.pop("max_size", None)
    values.update(overrides)
    return AnimationOptions(**values)


def note_cpu_speed(precision, compile):
    """One note for the options that make this CPU run slower. Reduced precision is slower than fp32 where
    the CPU has no instructions for it (measured with the bundled model on a 2-core Xeon without them: fp16
    at 0.55-0.6 times fp32's frames/s, bf16 at 0.2-0.45 times); with them it is faster (README)."""
    from fom_cli.runtime import cpu_precisions

    slower = []
    cpu = cpu_precisions()
    if precision in ("bf16", "fp16") and not getattr(cpu, precision):
        slower.append(f"--precision {precision} runs slower than fp32 on this CPU, not faster: it has no native "
                      f"{precision} ({cpu.why}), so every operation converts to float32 and back")
    if compile:
        slower.append("--compile is meant for GPUs: on the CPU it spends minutes compiling before the first frame")
    if slower:
        log.info("; ".join(slower))


def load_requested_model(args):
    """The api.Model for --checkpoint/--config/--align-corners/--device/--precision/--compile, loaded once,
    checked against --mode."""
    from fom_cli.api import load_model
    from fom_cli.families import check_animation_mode

    align_corners = None if args.align_corners is None else args.align_corners == "true"
    model = load_model(args.checkpoint, args.device, args.precision, args.config, align_corners, args.compile,
                       progress=not args.quiet, backend=getattr(args, "backend", None))
    if model.device.type == "cpu":
        note_cpu_speed(model.precision, args.compile)
    check_animation_mode(model.networks, args.mode, model.checkpoint)
    if model.precision_reason != "asked for":
        log.info(f"precision {model.precision} ({model.precision_reason})")
    return model
